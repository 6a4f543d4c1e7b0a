"""Character Cards in and out: JSON V1-V3, PNG cards and .charx.

This file: the checks on what a card brings in (bounded before any YAML is built), then the
card <-> persona mapping (a card becomes a persona skeleton, a persona becomes a card carrying
its YAML under `extensions.guppyforge`). png.py: the containers, PNG chunks and .charx zips.
pairs.py: `import-pairs`, the other skeleton from other people's material (a sheet of
question/answer pairs).
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
import unicodedata
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from jinja2 import TemplateError

from guppyforge.cards.png import CARD_FILE, read_packed_card, write_png_card
from guppyforge.errors import GuppyError, where
from guppyforge.files import builtin_persona, claim_file, guard, require_regular, write_atomic
from guppyforge.persona import bounds
from guppyforge.persona.chat_rows import examples_path
from guppyforge.persona.conversations import Sampler
from guppyforge.persona.schema import load_persona
from guppyforge.persona.templating import environment
from guppyforge.persona.yamlsafe import persona_file, read_yaml

# --- Checks on what a Character Card brings in: nesting depth, control characters, how much text
#
# (bounded before any YAML is built), and the persona an import would write (which must load
# before it is written).
#
# Cards come from strangers and from other tools: a card nested 100,000 levels deep must be a line
# about depth (not Python's recursion limit, nor "not UTF-8"), and a name with terminal escape
# codes must not reach a persona file (the schema refuses them) or a terminal.

_STRINGS = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"')  # unrolled: linear on a 30 MB string
_PAIR = re.compile(rb"\[\]|\{\}")
# Control characters other than newline and tab: a persona refuses them (and a terminal obeys them).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def deeper_than(raw: bytes, limit: int) -> bool:
    """Is valid JSON `raw` nested more than `limit` levels? Without recursion: strings dropped,
    then each pass removes the innermost `[]`/`{}` pairs; what is left after `limit` passes is
    deeper (or unbalanced, which json.loads then reports)."""
    brackets = _STRINGS.sub(b"", raw).translate(None, delete=bytes(set(range(256)) - set(b"[]{}")))
    for _ in range(limit):
        if not brackets:
            return False
        brackets = _PAIR.sub(b"", brackets)
    if not brackets:
        return False
    try:
        json.loads(raw)
    except ValueError:  # JSONDecodeError, or a number too long to read
        return False  # unbalanced: json.loads says where
    except (RecursionError, UnicodeDecodeError):
        return True
    return True


def strip_controls(value: Any) -> Any:
    """The card with control characters stripped from every text (keys included)."""
    if isinstance(value, str):
        return _CONTROL.sub("", value)
    if isinstance(value, list):
        return [strip_controls(v) for v in value]
    if isinstance(value, dict):
        return {_CONTROL.sub("", k): strip_controls(v) for k, v in value.items()}
    return value


def text_chars(value: Any) -> int:
    """Characters of text in a card's value (keys included), without recursion."""
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            total += sum(len(k) for k in item if isinstance(k, str))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return total


def check_card_text(value: Any, card_path: Path) -> None:
    """Refuse, before any conversion, a card whose text cannot fit the persona import writes.

    Everything a card holds goes into the persona (used, or kept under extensions), so text
    past the persona's 1 MiB can only be refused; finding that out by building the YAML of a
    30 MB card took minutes and gigabytes.
    """
    chars = text_chars(value)
    if chars > bounds.MAX_FILE_BYTES:
        raise GuppyError(
            f"{card_path}: holds {chars / 2**20:.1f} MiB of text, more than the "
            f"{bounds.MAX_FILE_BYTES >> 20} MiB a persona may hold (embedded "
            "images, a big lorebook?). Remove them from the card, import it "
            "again"
        )


def carried_examples(ours: dict, card_path: Path, out: Path) -> tuple[str, str] | None:
    """(relative path, text) of the examples_file a guppyforge card carries, checked: a plain
    path below the persona's folder, and no different file of the user's already there."""
    carried = ours.get("examples_file")
    if carried is None:
        return None
    carried = carried if isinstance(carried, dict) else {}
    rel, text = carried.get("path"), carried.get("text")
    parts = PurePosixPath(rel).parts if isinstance(rel, str) else ()
    if not (parts and isinstance(text, str)) or ".." in parts or PurePosixPath(rel).is_absolute():
        raise GuppyError(
            f"{card_path}: extensions.guppyforge.examples_file is not a file below the "
            "persona's folder. Export the card again"
        )
    target = out.parent / rel
    if target.exists() and target.read_bytes() != text.encode("utf-8"):
        raise GuppyError(
            f"{target}: already exists and differs from the examples file the card carries, "
            "and import never replaces it. Move it away, or pick another --out folder"
        )
    return rel, text


def _examples_beside(trial: Path, out: Path) -> tuple[str, str] | None:
    """(relative path, text) of the examples_file the persona at `trial` names, read from
    beside `out` (with the containment checks a load makes), or None."""
    with contextlib.suppress(GuppyError, OSError, UnicodeDecodeError, AttributeError):
        value = read_yaml(trial).data.get("examples_file")
        found = examples_path(out, value.get("path") if isinstance(value, dict) else value)
        if isinstance(found, tuple) and found[1].is_file():
            return found[0], found[1].read_bytes().decode("utf-8")
    return None


def check_persona_text(
    text: str, card_path: Path, out: Path, full: bool, examples: tuple[str, str] | None = None
) -> None:
    """Load the persona before it is written: import never leaves a file that fails validate.
    Its examples_file is the one the card carries, else the one beside `out`."""
    with tempfile.TemporaryDirectory() as tmp:
        trial = Path(tmp) / out.name
        trial.write_text(text, encoding="utf-8")
        if examples is None:  # an older card: the file may lie beside --out
            examples = _examples_beside(trial, out)
        if examples is not None:
            (trial.parent / examples[0]).parent.mkdir(parents=True, exist_ok=True)
            (trial.parent / examples[0]).write_text(examples[1], encoding="utf-8", newline="")
        try:
            load_persona(trial) if full else read_yaml(trial)
        except GuppyError as exc:
            why = str(exc).replace(str(trial), str(out))
            raise GuppyError(
                f"{card_path}: the persona made from it would not validate, so "
                f"nothing was written ({why})"
            ) from None


# --- Character Card interop: a card becomes a persona skeleton, and a persona becomes a card.
#
# Character Cards (V2: github.com/malfoyslastname/character-card-spec-v2, V3:
# github.com/kwaroran/character-card-spec-v3) are the JSON that chat front-ends share characters
# in. A card describes a character in prose, a persona how to *generate* its conversations, so an
# import only gives a skeleton (identity, greetings, examples) for the user to grow. Nothing is
# lost either way: card fields guppyforge does not use are kept under `extensions.character_card`
# and put back by export, as the specs ask of every editor; an exported card carries the whole
# persona (mapping and file text) under `data.extensions.guppyforge`, and imports back as is.

MAX_CARD_BYTES = 32 << 20  # cards may hold base64 images; the persona limit is checked later
ENVELOPE = ("spec", "spec_version", "data")  # a card's top level, rebuilt on export
V2_FIELDS = {  # every V2 `data` field with its default: the spec wants them all present
    "name": "",
    "description": "",
    "personality": "",
    "scenario": "",
    "first_mes": "",
    "mes_example": "",
    "creator_notes": "",
    "system_prompt": "",
    "post_history_instructions": "",
    "alternate_greetings": [],
    "tags": [],
    "creator": "",
    "character_version": "",
    "extensions": {},
}
GREETING_ASKS = ["hi", "hello", "hey", "hi there", "good morning", "hello {name}", "hey {name}"]

# {{char}}, {{user}} and their V1 spellings <BOT>, <USER> (and V3's <char>), in any case.
_MACRO = re.compile(r"\{\{\s*(char|user)\s*\}\}|<(bot|char|user)>", re.IGNORECASE)
_JINJA_OPEN = re.compile(r"\{(?=[{%#])")  # a brace that would open {{ }}, {% %} or {# #}
_SPEAKER = re.compile(r"^\s*([^:\n]{1,40}?)\s*:[ \t]?(.*)$")  # "{{user}}: hi", "Mochi: hey"
_START = re.compile(r"^[ \t]*<START>[ \t]*$", re.IGNORECASE | re.MULTILINE)
_PERSONALITY = re.compile(r"^Personality:[ \t]*", re.MULTILINE)  # where notes' personality starts


def read_card(path: Path) -> dict[str, Any]:
    """Read a card (JSON, PNG or .charx) as `{spec, spec_version, data, ...}` (V1 -> `data`)."""
    require_regular(path, "Give the card file itself")
    try:
        raw = read_packed_card(path)  # the JSON inside a PNG card or a .charx; None otherwise
        if raw is None:
            with open(path, "rb") as f:
                raw = f.read(MAX_CARD_BYTES + 1)
    except OSError as exc:
        raise GuppyError(f"{path}: cannot read the card ({exc.strerror}). Check the path") from None
    if len(raw) > MAX_CARD_BYTES:
        raise GuppyError(
            f"{path}: larger than the {MAX_CARD_BYTES >> 20} MiB limit for a card. "
            "Remove embedded images or a big lorebook, and export it again"
        )
    too_deep = GuppyError(
        f"{path}: nested more than {bounds.MAX_CARD_DEPTH} levels deep (lists "
        "in lists...). Flatten the card, or export it again"
    )
    try:
        card = json.loads(raw) if not deeper_than(raw, bounds.MAX_CARD_DEPTH) else None
    except json.JSONDecodeError as exc:
        at = where(path, exc.lineno, exc.colno)
        raise GuppyError(f"{at}: not valid JSON ({exc.msg}). Export the card as JSON") from None
    except UnicodeDecodeError:
        raise GuppyError(f"{path}: not UTF-8 JSON. Export the card as JSON") from None
    except RecursionError:
        raise too_deep from None
    except ValueError as exc:  # e.g. a number of more than 4,300 digits
        why = str(exc).split(":")[0]
        raise GuppyError(f"{path}: not valid JSON ({why}). Export the card as JSON") from None
    if card is None:
        raise too_deep
    card = strip_controls(card)
    card = card if isinstance(card, dict) else {}
    if isinstance(card.get("data"), dict) and str(card.get("spec")).startswith("chara_card_"):
        return card
    if isinstance(card.get("name"), str) and "description" in card and "data" not in card:
        return {"data": card}  # V1 cards are flat: all of it is what V2 put under `data`
    raise GuppyError(
        f"{path}: not a Character Card (no `spec: chara_card_v2`/v3 and `data`, "
        "nor a V1 card's `name`). Give a card exported as JSON"
    )


def slugify(text: str) -> str:
    """A persona name from a display name: 'Hatsune Miku!' -> 'hatsune-miku'."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:40].strip("-")
    return slug or "character"  # a name in another script has no ASCII letters left


def escape_jinja(text: str) -> str:
    """Make text render as itself in a persona template, so a card can never inject code: each
    `{` that would open `{{`, `{%` or `{#` becomes `{{ '{' }}`, which renders a plain brace."""
    return _JINJA_OPEN.sub("{{ '{' }}", text)


def parse_examples(text: str, names: set[str]) -> tuple[list[dict], list[str]]:
    """Split `mes_example` into persona examples, and the blocks that are not user, character,
    user, character... exchanges (as text, for the caller to keep). A block starts at `<START>`;
    a line without a speaker (`{{user}}:`, `{{char}}:`, a name) continues the message above."""
    examples, leftovers = [], []
    for block in filter(None, (b.strip() for b in _START.split(text))):
        messages: list[list[str]] = []  # [role, text]
        for line in block.splitlines():
            match = _SPEAKER.match(line)
            who = match[1].lower() if match else ""
            role = "user" if who in ("{{user}}", "<user>", "user") else None
            role = "assistant" if who in names else role
            if role and messages and messages[-1][0] == role:
                messages[-1][1] += "\n" + match[2].strip()
            elif role:
                messages.append([role, match[2].strip()])
            else:  # a line with no speaker continues the message above (or spoils the block)
                messages = messages or [["narration", ""]]
                messages[-1][1] = (messages[-1][1] + "\n" + line).strip()
        if [role for role, _ in messages] == ["user", "assistant"] * (len(messages) // 2):
            pairs = zip(messages[::2], messages[1::2], strict=True)
            examples.append({"turns": [{"user": u, "assistant": a} for (_, u), (_, a) in pairs]})
        else:
            leftovers.append(block)
    return examples, leftovers


def card_to_persona(card: dict[str, Any]) -> dict[str, Any]:
    """A persona skeleton that validates, made from a card; unused fields go to extensions."""
    data, used = card["data"], set()

    def text(key: str) -> str:  # a field as text; one of another type is not used, so kept
        used.update([key] if isinstance(data.get(key), str) else [])
        return data[key].strip() if key in used else ""

    def strings(key: str) -> list[str]:  # the same for a list of texts
        value = data.get(key)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            used.add(key)
        return [v.strip() for v in value if v.strip()] if key in used else []

    def macros(value: str, char: str) -> str:  # {{char}}/<BOT> -> the name, {{user}} -> "you"
        return _MACRO.sub(lambda m: "you" if (m[1] or m[2]).lower() == "user" else char, value)

    display = " ".join(text("name").split())[:200] or "Character"  # a name, not a text
    # V3's nickname, when given (it is also kept), is what {{char}} stands for
    char = n.strip()[:200] if isinstance(n := data.get("nickname"), str) and n.strip() else display
    description, personality = (macros(text(k), char) for k in ("description", "personality"))
    greetings = [macros(g, char) for g in (text("first_mes"), *strings("alternate_greetings"))]
    too_long = [g for g in greetings if len(g) > bounds.MAX_MESSAGE_CHARS]
    greetings = [g for g in greetings if g and len(g) <= bounds.MAX_MESSAGE_CHARS]
    names = {"{{char}}", "<bot>", "<char>", "char", display.lower(), char.lower()}  # speakers
    examples, leftovers = parse_examples(text("mes_example"), names)
    for example in examples:
        example["turns"] = [{k: macros(v, char) for k, v in t.items()} for t in example["turns"]]
    line = next((ln.strip() for ln in description.splitlines() if ln.strip()), "")
    summary = re.split(r"(?<=[.!?])\s", line, maxsplit=1)[0]  # the first sentence, <= ~200 chars
    summary = summary if len(summary) <= 200 else summary[:197].rsplit(" ", 1)[0] + "..."
    words = [*dict.fromkeys(re.findall(r"[^\W\d_]{4,}", (greetings or [char])[0].lower()))]
    notes = [description, f"Personality: {personality}" if personality else ""]
    persona = {
        "guppyforge": 1,  # a card uses nothing newer than format 1
        "name": slugify(display),
        "display_name": display,
        "summary": summary or f"{display}, imported from a Character Card.",
        "author": text("creator"),
        "version": text("character_version"),
        "tags": strings("tags"),
        "notes": "\n\n".join(filter(None, notes)),
        "style": {"case": "keep"},  # cards are written in sentence case: keep it
        "topics": {
            "greeting": {
                "ask": [a.format(name=escape_jinja(char)) for a in GREETING_ASKS],
                "say": [escape_jinja(g) for g in greetings or [f"Hello! I am {char}."]],
            }
        },
        "examples": examples,
        "probes": [{"ask": a, "expect_any": words[:3] or [char]} for a in ("hello", "hey")],
    }
    persona = {k: v for k, v in persona.items() if v}  # leave out what the card did not have
    # Kept: fields not used above (bar empty V2 defaults, which export writes anyway), and what
    # a persona cannot hold: greetings too long for a message, blocks that are not exchanges.
    kept = {k: v for k, v in data.items() if k not in used and V2_FIELDS.get(k, ...) != v}
    kept |= {"alternate_greetings": too_long} if too_long else {}
    kept |= {"mes_example": "\n".join(f"<START>\n{b}" for b in leftovers)} if leftovers else {}
    saved = {k: card[k] for k in ("spec", "spec_version") if k in card} | {"data": kept}
    # Top-level fields: front-end settings, and V1 copies of `data` (dropped if only copies).
    root = {k: v for k, v in card.items() if k not in ENVELOPE and data.get(k) != v}
    persona["extensions"] = {"character_card": saved | ({"root": root} if root else {})}
    return persona


def page_identity(persona) -> dict:
    """What the chat page shows of a character (serve's page and the web export alike): its
    name, summary and the first message a card would open with."""
    first = persona_to_card(persona)["data"]["first_mes"]
    return {"name": persona.display_name, "summary": persona.summary, "first_message": first}


def persona_to_card(persona: Any) -> dict[str, Any]:
    """A V2 card from a loaded persona: the fields it has, the fields an earlier import kept,
    and the whole persona (mapping and file text) under `data.extensions.guppyforge`."""
    saved = s if isinstance(s := persona.extensions.get("character_card"), dict) else {}
    kept = dict(saved["data"]) if isinstance(saved.get("data"), dict) else {}
    root = saved["root"] if isinstance(saved.get("root"), dict) else {}
    # notes hold the full description (an import puts the card's there), then the personality
    body, personality = (t.strip() for t in [*_PERSONALITY.split(persona.notes, 1), ""][:2])
    if not body.startswith(persona.summary.removesuffix("...")):  # add the summary if not there
        body = f"{persona.summary}\n\n{body}".strip()
    greetings = _greetings(persona)
    blocks = [
        "\n".join(["<START>", *(f"{{{{user}}}}: {u}\n{{{{char}}}}: {a}" for u, a in e.turns)])
        for e in persona.examples
        if e.turns
    ]
    mine = {
        "name": persona.display_name,
        "description": body,
        "personality": personality,
        "first_mes": greetings[0] if greetings else "",
        "mes_example": "\n".join(blocks),
        "alternate_greetings": greetings[1:],
        "tags": list(persona.tags),
        "creator": persona.author,
        "character_version": persona.version,
    }
    data = {**V2_FIELDS, **kept}
    for key, value in mine.items():  # what the persona says wins; kept fields fill the gaps
        if value or key not in kept:
            data[key] = value
    # greetings and example blocks that an import could not use come after the persona's own
    for key, glue in (("alternate_greetings", []), ("mes_example", "\n")):
        if mine[key] and type(kept.get(key)) is type(mine[key]):
            data[key] = mine[key] + glue + kept[key]
    extensions = data["extensions"] if isinstance(data["extensions"], dict) else {}
    source = persona.path.read_bytes().decode("utf-8-sig")  # keeps comments and `yes` as text
    ours = {"format": 1, "persona": persona.raw, "yaml": source}  # format: of this mapping
    if persona.examples_file:  # carried along, so the card alone brings the character back
        rel = persona.examples_file[0]
        text = (persona.path.parent / rel).read_bytes().decode("utf-8")
        ours["examples_file"] = {"path": rel, "text": text}
    data["extensions"] = {**extensions, "guppyforge": ours}
    envelope = {"spec": "chara_card_v2", "spec_version": "2.0", "data": data}
    return {**envelope, **{k: v for k, v in root.items() if k not in ENVELOPE}}


def _greetings(persona: Any) -> list[str]:
    """The `greeting` topic's hand-written examples, then each `say` of plain text (all that an
    import writes) styled as the Sampler would; else one reply drawn by the (seeded) Sampler."""

    says = persona.topics["greeting"].say if "greeting" in persona.topics else ()
    sampler = Sampler(persona, 0)
    out = [e.turns[0][1] for e in persona.examples if e.topic == "greeting" and e.turns]
    for say in says:
        with contextlib.suppress(TemplateError):  # a `say` that uses grammar symbols is skipped
            out.append(sampler.style(environment().from_string(say.text).render().strip()))
    if says and not out:
        out.append(sampler.conversation(0, topic="greeting").messages[-1]["content"])
    return [text for text in dict.fromkeys(out) if text]


class _Dumper(yaml.SafeDumper):
    """safe_dump with multi-line text as `|` blocks, and repeated values written out again."""

    def ignore_aliases(self, data: Any) -> bool:
        return True  # copies read better than `&id001` anchors and `*id001` references

    def text(self, value: str) -> yaml.ScalarNode:  # PyYAML quotes what a block cannot hold
        return self.represent_scalar("tag:yaml.org,2002:str", value, "|" if "\n" in value else None)


_Dumper.add_representer(str, _Dumper.text)


def dump_yaml(data: Any) -> str:
    """YAML text of a mapping: keys in order, Unicode as is, long lines never folded."""
    return yaml.dump(data, Dumper=_Dumper, allow_unicode=True, sort_keys=False, width=1 << 20)


_HEADER = """\
# {display}: a persona skeleton made by `guppyforge import-card {source}`. It validates but it
# only greets. Next: read `notes` (the card's description: the voice), add a `grammar`, more
# `topics` and `probes` (docs/persona-format.md), run `guppyforge validate {out}`. Card fields
# guppyforge does not use stay in `extensions.character_card`: export-card puts them back.
"""


def import_card(card_path: str | Path, out: str | Path | None = None, force: bool = False) -> Path:
    """Write the persona of a card file (see the module docstring); return the path written."""
    card = read_card(card_path := Path(card_path))
    ours = card["data"].get("extensions")
    ours = ours.get("guppyforge") if isinstance(ours, dict) else None
    persona = ours.get("persona") if isinstance(ours, dict) else None
    if not (isinstance(persona, dict) and persona):  # not a card that guppyforge exported
        check_card_text(card, card_path)
        ours, persona = {}, card_to_persona(card)
    elif not isinstance(ours.get("yaml"), str):  # only the mapping: it becomes the YAML
        check_card_text(persona, card_path)
    name = slugify(str(persona.get("name") or ""))  # an embedded name may not be a safe path
    out = Path(out) if out else Path("personas") / f"{name}.yaml"
    hint = "Pass --force to replace it, or --out NEW.yaml"
    claim_file(out, persona_file(persona.get("name")), force, inputs=[card_path], hint=hint)
    if not ours:
        header = _HEADER.format(display=persona["display_name"], source=card_path.name, out=out)
        text = header + dump_yaml(persona)
    elif isinstance(ours.get("yaml"), str):  # the file itself: comments, `yes` as text... kept
        text = ours["yaml"]
    else:  # a tool that kept only the mapping still gets the same mapping back
        text = f"# Restored by `guppyforge import-card {card_path.name}`.\n{dump_yaml(persona)}"
    if len(text.encode()) > bounds.MAX_FILE_BYTES:
        too_big = "its persona would pass the 1 MiB limit (embedded images, a big lorebook?)"
        raise GuppyError(f"{card_path}: {too_big}. Remove them from the card, import it again")
    # What import writes must validate: a skeleton made here, and the file a card carries back
    # (it validated when exported: failing now means it was edited). The one exception is a
    # bare mapping from another tool, written back as it is once it passes the safe-YAML limits.
    examples = carried_examples(ours, card_path, out) if ours else None
    full = not ours or isinstance(ours.get("yaml"), str)
    check_persona_text(text, card_path, out, full, examples)
    if examples is not None and not (target := out.parent / examples[0]).exists():
        guard(target, lambda: target.parent.mkdir(parents=True, exist_ok=True))
        guard(target, lambda: write_atomic(target, examples[1]))
    guard(out, lambda: write_atomic(out, text))
    return out


def export_card(
    persona_path: str | Path, out: str | Path, png: str | Path | None = None, force: bool = False
) -> Path:
    """Write a persona (a file, or a built-in's name) as a Character Card V2 JSON file, or,
    given a picture `png`, as a PNG card (V2 `chara` and V3 `ccv3` chunks; below).

    An existing `out` is replaced only with `force`, and only if it is a card guppyforge wrote.
    """
    path = Path(persona_path)
    path = path if path.exists() else builtin_persona(str(path)) or path
    claim_file(out, CARD_FILE, force, inputs=[path])
    persona = load_persona(path)
    card = persona_to_card(persona)
    try:  # persona files hold JSON's types only (see yamlsafe), except NaN and infinity
        text = json.dumps(card, ensure_ascii=False, indent=2, allow_nan=False)
    except ValueError:
        raise GuppyError(f"{persona_path}: holds NaN or infinity, not JSON. Remove it") from None
    if png is not None:
        guard(Path(out), lambda: write_png_card(card, Path(png), Path(out)))
        return Path(out)
    guard(Path(out), lambda: write_atomic(Path(out), text + "\n"))
    return Path(out)
