"""Text the commands print: the persona tables and previews, and traces for a terminal.

Kept apart from the CLI so each command stays one call, and free of torch so the persona
commands stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from guppyforge.defaults import ROWS
from guppyforge.errors import GuppyError
from guppyforge.files import builtin_personas, cut, personas_dir, printable, text_table
from guppyforge.persona.schema import load_persona

if TYPE_CHECKING:  # the persona commands print from here without loading torch
    from guppyforge.evaluate.trace import Trace, TraceIndex

# --- Text that the persona commands print: the capacity table, a previewed conversation, the list of
#
# built-in personas. Kept apart from cli.py so the commands stay one call each.


def capacity_table(table: dict, forecast=None) -> str:
    """Per-topic distinct prompts, replies and conversations, with a total; `>=` marks a floor.
    With a forecast: the rows each topic will get, and the unique share generate will see."""

    def num(n: int, exact: bool) -> str:
        return f"{'' if exact else '>='}{n:,}"

    rows_at = f"rows@{forecast.n:,}" if forecast else None
    rows = [("topic", "prompts", "replies", "conversations", *([rows_at] if rows_at else []))]
    for name, c in table.items():
        rows.append(
            (
                name,
                num(c.prompts, c.exact),
                num(c.replies, c.exact),
                num(c.conversations, c.exact),
                *([f"{forecast.rows[name]:,}"] if forecast else []),
            )
        )
    exact = all(c.exact for c in table.values())
    total = num(sum(c.conversations for c in table.values()), exact)
    rows.append(
        ("total", "", "", total, *([f"{sum(forecast.rows.values()):,}"] if forecast else []))
    )
    text = text_table(rows, indent="  ")
    if forecast:
        full = "" if not forecast.capacity_spent else ", then the persona runs out"
        made = forecast.n - forecast.examples
        examples = f", beside its {forecast.examples:,} hand-written examples" * bool(
            forecast.examples
        )
        text += (
            f"\n  predicted for -n {forecast.n:,}: {forecast.unique_pct:.2f}% unique of "
            f"{forecast.drawn:,} drawn{full} (generate draws conversations until {made:,} are "
            f"new{examples}; a repeat is drawn again)"
        )
        if line := forecast.turn_line():
            text += f"\n  {line}"
    return text


_GOLDEN = (5**0.5 - 1) / 2


def spread(count: int, span: int = ROWS) -> list[int]:
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
    for path in builtin_personas():
        try:
            p = load_persona(path)
        except GuppyError as exc:
            lines.append(f"{path.stem:<12} (invalid: {exc})")
            continue
        lines.append(f"{p.name:<12} {p.display_name}: {p.summary} ({len(p.topics)} topics)")
    return "\n".join(lines) or f"no personas in {personas_dir()}"


# --- Traces for a terminal: `format_trace` (what `why` prints) and `format_choices` (the `/why`
#
# lesson on sampling: at the tokens where the model hesitated, where each candidate comes from).

WIDTH = 76
KINDS = {
    "verbatim": "verbatim: this exact reply is in the training data",
    "recombined": "recombined: every span is in the training data, but never all in one reply",
    "novel": "novel: the spans marked * are in no training reply; the model made them up",
}


def _around(text: str, end: int, width: int = 34) -> str:
    """The stretch of a training reply that leads up to `end` (and a little after it)."""
    start = max(0, end - width + 8)
    snippet = " ".join(text[start : start + width].split())
    return ("…" if start else "") + snippet + ("…" if start + width < len(text) else "")


def marks(trace: Trace) -> str:
    """One character under each character of the reply: the number of the first source that
    covers it, `*` where the reply is new, a blank elsewhere (spaces, punctuation between)."""
    line = [" "] * len(trace.reply)
    for a, b in trace.new:
        line[a:b] = "*" * (b - a)
    for n, source in reversed(list(enumerate(trace.sources, 1))):  # the first source on top
        for a, b in source.spans:
            line[a:b] = str(n % 10) * (b - a)
    return "".join(line)


def _wrapped(text: str, under: str, indent: str) -> list[str]:
    """The reply and its marks, wrapped together at spaces so each mark stays under its letter."""
    out, start = [], 0
    while start < len(text):
        end = len(text)
        if end - start > WIDTH:
            space = text.rfind(" ", start, start + WIDTH)
            end = space + 1 if space > start else start + WIDTH
        out += [indent + text[start:end].rstrip(), indent + under[start:end].rstrip()]
        start = end
    return out


def format_trace(trace: Trace) -> str:
    """The readable answer of `guppyforge why`."""
    if not trace.reply:
        return "(an empty reply: nothing to trace)"
    head = KINDS[trace.kind]
    if trace.kind == "verbatim":
        rows = trace.sources[0].rows
        head += f" ({rows:,} training row{'s' if rows != 1 else ''})"
    elif trace.words:
        head += f" ({trace.seen_words}/{trace.words} words seen in training)"
    lines = [head + ".", ""] + _wrapped(trace.reply, marks(trace), "  ") + [""]
    for n, s in enumerate(trace.sources, 1):
        topic = f"  ({s.topic})" if s.topic else ""
        lines.append(f"  {n}  {s.where}  {s.key or s.template_id}{topic}")
        if trace.kind != "verbatim":
            covers = ", ".join(repr(trace.reply[a:b]) for a, b in s.spans) or "(no 3-word span)"
            lines.append(f"     covers    {cut(covers, WIDTH - 12)}")
            lines.append(f"     from      {cut(s.text, WIDTH - 12)!r}")
        if s.template:
            lines.append(f"     template  {cut(s.template, WIDTH - 12)}")
    if trace.new:
        new = ", ".join(repr(trace.reply[a:b]) for a, b in trace.new)
        lines.append(f"  *  new: {cut(new, WIDTH - 9)}  (in no training reply)")
    return "\n".join(lines)


def format_short(trace: Trace) -> str:
    """One line per reply, for `chat --trace`."""
    if not trace.sources:
        return f"  [{trace.kind}]"
    where = ", ".join(dict.fromkeys(s.where for s in trace.sources))
    new = f"; new: {', '.join(repr(trace.reply[a:b]) for a, b in trace.new)}" if trace.new else ""
    return cut(f"  [{trace.kind}: {where}{new}]", WIDTH + 20)


def hesitations(record: list[tuple[int, list]], points: int) -> list[int]:
    """The positions of the `points` tokens whose top candidate was least likely, in order."""
    ranked = sorted(range(len(record)), key=lambda t: record[t][1][0][1] if record[t][1] else 1)
    return sorted(t for t in ranked[:points] if record[t][1] and record[t][1][0][1] < 0.9)


def format_choices(index: TraceIndex, decode, record: list[tuple[int, list]], points: int = 4):
    """At the tokens where the model was least sure: its top candidates, with probabilities,
    and for each the persona line of a training reply that goes on that way.

    `record` holds, per token of the reply, (token id, [(candidate id, p at T=1, p at T)]);
    `decode` turns token ids into text.
    """
    chosen = hesitations(record, points)
    if not chosen:
        return "how it picked the words: the top candidate had p >= 0.9 at every token."
    lines = [
        f"how it picked the words: the {len(chosen)} tokens where the model was least sure",
        "(p at T=1; each candidate's persona line is a training reply that continues that way)",
    ]
    tokens = [t for t, _ in record]
    for t in chosen:
        before = decode(tokens[:t])
        lines += ["", f"  after {('…' + before[-40:]) if len(before) > 40 else before!r}:"]
        for cid, p, _ in record[t][1]:
            piece = decode([cid])
            found = index.continuing(before, piece)
            mark = "<- picked" if cid == tokens[t] else ""
            if found is None:
                origin = "(no training reply goes on this way)"
            else:
                s = index.source(found[0], [])
                origin = f"{s.where}  {_around(s.text, found[1])}"
            lines.append(f"    {p:5.2f}  {piece!r:12} {mark:9}  {origin}")
    return "\n".join(lines)
