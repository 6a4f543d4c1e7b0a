"""Text that the persona commands print: the capacity table, a previewed conversation, the list of
built-in personas. Kept apart from cli.py so the commands stay one call each."""

from __future__ import annotations

from guppyforge import resources
from guppyforge.errors import GuppyError
from guppyforge.files import printable, text_table
from guppyforge.persona.load import load_persona


def capacity_table(table: dict, forecast=None) -> str:
    """Per-topic distinct prompts, replies and conversations, with a total; `>=` marks a floor.
    With a forecast: the rows each topic will get, and the unique share generate will see."""

    def num(n: int, exact: bool) -> str:
        return f"{'' if exact else '>='}{n:,}"

    rows_at = f"rows@{forecast.n:,}" if forecast else None
    rows = [("topic", "prompts", "replies", "conversations", *([rows_at] if rows_at else []))]
    for name, c in table.items():
        rows.append((name, num(c.prompts, c.exact), num(c.replies, c.exact),
                     num(c.conversations, c.exact),
                     *([f"{forecast.rows[name]:,}"] if forecast else [])))  # fmt: skip
    exact = all(c.exact for c in table.values())
    total = num(sum(c.conversations for c in table.values()), exact)
    rows.append(
        ("total", "", "", total, *([f"{sum(forecast.rows.values()):,}"] if forecast else []))
    )
    text = text_table(rows, indent="  ")
    if forecast:
        full = "" if not forecast.capacity_spent else ", then the persona runs out"
        text += (f"\n  predicted for -n {forecast.n:,}: {forecast.unique_pct:.2f}% unique of "
                 f"{forecast.drawn:,} drawn{full}")  # fmt: skip
    return text


_GOLDEN = (5**0.5 - 1) / 2


def spread(count: int, span: int = 60_000) -> list[int]:
    """`count` conversation indices spread evenly over `span` (a golden-ratio walk), so a
    preview shows topics and openers in the proportions of a dataset, not its first rows."""
    return [0] + [int((i * _GOLDEN) % 1.0 * span) for i in range(1, count)]


def format_conversation(conversation, display_name: str, varied: list | None = None) -> str:
    """A conversation as `user:` / `Name:` lines under a `# template id` header.

    `varied`: the messages after user-side variation; a changed one shows what was written too.
    """
    lines = [f"# {conversation.template_id}"]
    for m, v in zip(conversation.messages, varied or conversation.messages, strict=True):
        who = "user" if m["role"] == "user" else display_name
        written = f"   (written: {m['content']})" if v["content"] != m["content"] else ""
        lines.append(f"{who}: {v['content']}{written}")
    return printable("\n".join(lines)) + "\n"  # a persona's escape codes never reach the terminal


def list_builtin() -> str:
    """One line per persona in personas/: name, display name, summary; broken ones say why."""
    lines = []
    for path in resources.builtin_personas():
        try:
            p = load_persona(path)
        except GuppyError as exc:
            lines.append(f"{path.stem:<12} (invalid: {exc})")
            continue
        lines.append(f"{p.name:<12} {p.display_name}: {p.summary} ({len(p.topics)} topics)")
    return "\n".join(lines) or f"no personas in {resources.personas_dir()}"
