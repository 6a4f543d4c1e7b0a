"""Character Card interop: a card becomes a persona skeleton, and a persona becomes a card.

Character Cards (V2: github.com/malfoyslastname/character-card-spec-v2, V3:
github.com/kwaroran/character-card-spec-v3) are the JSON that chat front-ends share characters
in. A card describes a character in prose, a persona how to *generate* its conversations, so an
import only gives a skeleton (identity, greetings, examples) for the user to grow. Nothing is
lost either way: card fields guppyforge does not use are kept under `extensions.character_card`
and put back by export, as the specs ask of every editor; an exported card carries the whole
persona (mapping and file text) under `data.extensions.guppyforge`, and imports back as is.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import unicodedata
from pathlib import Path
from typing import Any

import yaml

from guppyforge import limits
from guppyforge.errors import GuppyError, where

MAX_CARD_BYTES = 32 << 20  # cards may hold base64 images; the persona limit is checked later
ENVELOPE = ("spec", "spec_version", "data")  # a card's top level, rebuilt on export
V2_FIELDS = {  # every V2 `data` field with its default: the spec wants them all present
    "name": "", "description": "", "personality": "", "scenario": "", "first_mes": "",
    "mes_example": "", "creator_notes": "", "system_prompt": "", "post_history_instructions": "",
    "alternate_greetings": [], "tags": [], "creator": "", "character_version": "", "extensions": {},
}  # fmt: skip
GREETING_ASKS = ["hi", "hello", "hey", "hi there", "good morning", "hello {name}", "hey {name}"]

# {{char}}, {{user}} and their V1 spellings <BOT>, <USER> (and V3's <char>), in any case.
_MACRO = re.compile(r"\{\{\s*(char|user)\s*\}\}|<(bot|char|user)>", re.IGNORECASE)
_JINJA_OPEN = re.compile(r"\{(?=[{%#])")  # a brace that would open {{ }}, {% %} or {# #}
_SPEAKER = re.compile(r"^\s*([^:\n]{1,40}?)\s*:[ \t]?(.*)$")  # "{{user}}: hi", "Mochi: hey"
_START = re.compile(r"^[ \t]*<START>[ \t]*$", re.IGNORECASE | re.MULTILINE)
_PERSONALITY = re.compile(r"^Personality:[ \t]*", re.MULTILINE)  # where notes' personality starts


def read_card(path: Path) -> dict[str, Any]:
    """Read a card JSON file as `{spec, spec_version, data, ...}` (a V1 card becomes `data`)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CARD_BYTES + 1)
    except OSError as exc:
        raise GuppyError(f"{path}: cannot read the card ({exc.strerror}). Check the path") from None
    if raw.startswith(b"\x89PNG") or len(raw) > MAX_CARD_BYTES:
        raise GuppyError(f"{path}: not a JSON file (a PNG card?). Export the card as JSON")
    try:
        card = json.loads(raw)
    except json.JSONDecodeError as exc:
        at = where(path, exc.lineno, exc.colno)
        raise GuppyError(f"{at}: not valid JSON ({exc.msg}). Export the card as JSON") from None
    except (UnicodeDecodeError, RecursionError):
        raise GuppyError(f"{path}: not UTF-8 JSON. Export the card as JSON") from None
    card = card if isinstance(card, dict) else {}
    if isinstance(card.get("data"), dict) and str(card.get("spec")).startswith("chara_card_"):
        return card
    if isinstance(card.get("name"), str) and "description" in card and "data" not in card:
        return {"data": card}  # V1 cards are flat: all of it is what V2 put under `data`
    raise GuppyError(f"{path}: not a Character Card (no `spec: chara_card_v2`/v3 and `data`, "
                     "nor a V1 card's `name`). Give a card exported as JSON")  # fmt: skip


def slugify(text: str) -> str:
    """A persona name from a display name: 'Hatsune Miku!' -> 'hatsune-miku'."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:40].strip("-")
    return slug or "character"  # a name in another script has no ASCII letters left


def escape_jinja(text: str) -> str:
    """Make text render as itself in a persona template, so a card can never inject code: a `{`
    that would open `{{`, `{%` or `{#` becomes `{{ '{' }}`, a plain brace ("{{x}}" stays "{{x}}")."""
    return _JINJA_OPEN.sub("{{ '{' }}", text)


def _macros(text: str, char: str) -> str:
    """Card macros as plain text: {{char}}/<BOT> -> the character's name, {{user}} -> 'you'."""
    return _MACRO.sub(lambda m: "you" if (m[1] or m[2]).lower() == "user" else char, text)


def parse_examples(text: str, names: set[str]) -> tuple[list[dict], list[str]]:
    """Split `mes_example` into persona examples, and the blocks that are not one (returned as
    text so the caller can keep them). A block starts at `<START>`; its lines are `{{user}}: ...`
    or `{{char}}: ...` (or a name in `names`); a line without a speaker continues the message
    above. A block is an example when it goes user, character, user, character..."""
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

    display = " ".join(text("name").split()) or "Character"
    nickname = data.get("nickname")  # V3: what {{char}} stands for, when given (and kept)
    char = nickname.strip() if isinstance(nickname, str) and nickname.strip() else display
    description, personality = (_macros(text(k), char) for k in ("description", "personality"))
    greetings = [_macros(g, char) for g in (text("first_mes"), *strings("alternate_greetings"))]
    names = {"{{char}}", "<bot>", "<char>", "char", display.lower(), char.lower()}
    examples, leftovers = parse_examples(text("mes_example"), names)
    for example in examples:
        example["turns"] = [{k: _macros(v, char) for k, v in t.items()} for t in example["turns"]]
    tags, author, version = strings("tags"), text("creator"), text("character_version")

    # Kept: every field not used above (empty V2 defaults aside: export writes those anyway),
    # and what a used field held that a persona cannot: greetings too long to be one message,
    # example blocks that are not a user/character exchange.
    kept = {k: v for k, v in data.items() if k not in used and V2_FIELDS.get(k, ...) != v}
    too_long = [g for g in greetings if len(g) > limits.MAX_MESSAGE_CHARS]
    greetings = [g for g in greetings if g and len(g) <= limits.MAX_MESSAGE_CHARS]
    kept |= {"alternate_greetings": too_long} if too_long else {}
    kept |= {"mes_example": "\n".join(f"<START>\n{b}" for b in leftovers)} if leftovers else {}
    saved = {k: card[k] for k in ("spec", "spec_version") if k in card} | {"data": kept}
    # Top-level fields besides the envelope: V1 copies of `data` that many V2 tools still write
    # (dropped when they only repeat it) and front-end settings (kept).
    root = {k: v for k, v in card.items() if k not in ENVELOPE and data.get(k) != v}
    saved |= {"root": root} if root else {}

    notes = "\n\n".join(filter(None, [description, personality and f"Personality: {personality}"]))
    asks = [a.format(name=escape_jinja(char)) for a in GREETING_ASKS]
    says = [escape_jinja(g) for g in greetings or [f"Hello! I am {char}."]]
    words = re.findall(r"[^\W\d_]{4,}", (greetings or [char])[0].lower())  # for a probe
    # summary: the description's first sentence (first line, ~200 characters at most)
    line = next((ln.strip() for ln in description.splitlines() if ln.strip()), "")
    summary = re.split(r"(?<=[.!?])\s", line, maxsplit=1)[0]
    summary = summary if len(summary) <= 200 else summary[:197].rsplit(" ", 1)[0] + "..."
    optional = {"author": author, "version": version, "tags": tags, "notes": notes}
    return {
        "guppyforge": limits.SPEC_VERSION,
        "name": slugify(display),
        "display_name": display,
        "summary": summary or f"{display}, imported from a Character Card.",
        **{k: v for k, v in optional.items() if v},
        "style": {"case": "keep"},  # cards are written in sentence case: keep it
        "topics": {"greeting": {"ask": asks, "say": says}},
        **({"examples": examples} if examples else {}),
        "probes": [{"ask": "hello", "expect_any": list(dict.fromkeys(words))[:3] or [char]}],
        "extensions": {"character_card": saved},
    }


def persona_to_card(persona: Any) -> dict[str, Any]:
    """A V2 card from a loaded persona: the fields it has, the fields an earlier import kept,
    and the whole persona (mapping and file text) under `data.extensions.guppyforge`."""
    saved = persona.extensions.get("character_card")
    saved = saved if isinstance(saved, dict) else {}
    kept = dict(saved["data"]) if isinstance(saved.get("data"), dict) else {}
    root = saved["root"] if isinstance(saved.get("root"), dict) else {}
    body, personality = (_PERSONALITY.split(persona.notes, maxsplit=1) + [""])[:2]
    body = body.strip()  # notes hold the full description (an import puts the card's there)...
    if not body.startswith(persona.summary.removesuffix("...")):
        body = f"{persona.summary}\n\n{body}".strip()  # ...so add the summary unless it is there
    greetings = _greetings(persona)
    blocks = ["\n".join(["<START>", *(f"{{{{user}}}}: {u}\n{{{{char}}}}: {a}" for u, a in e.turns)])
              for e in persona.examples if e.turns]  # fmt: skip
    mine = {"name": persona.display_name, "description": body, "personality": personality.strip(),
            "first_mes": greetings[0] if greetings else "", "mes_example": "\n".join(blocks),
            "alternate_greetings": greetings[1:], "tags": list(persona.tags),
            "creator": persona.author, "character_version": persona.version}  # fmt: skip
    # What the persona says wins; kept fields fill what it leaves empty. Greetings and example
    # blocks that an import could not use come after the persona's own.
    data = {**V2_FIELDS, **kept}
    for key, value in mine.items():
        if value and key in ("mes_example", "alternate_greetings") and data[key]:
            data[key] = value + ("\n" if key == "mes_example" else []) + data[key]
        elif value or key not in kept:
            data[key] = value
    extensions = data["extensions"] if isinstance(data["extensions"], dict) else {}
    source = persona.path.read_bytes().decode("utf-8-sig")  # keeps comments and `yes` as text
    ours = {"format": 1, "persona": persona.raw, "yaml": source}  # format: of this mapping
    data["extensions"] = {**extensions, "guppyforge": ours}
    envelope = {"spec": "chara_card_v2", "spec_version": "2.0", "data": data}
    return {**envelope, **{k: v for k, v in root.items() if k not in ENVELOPE}}


def _greetings(persona: Any) -> list[str]:
    """The `greeting` topic's replies: its hand-written examples, then each `say` of plain text
    (all that an import writes), styled as the Sampler would. A `say` that needs the grammar is
    left out, unless nothing else is there: then the (seeded) Sampler draws one."""
    from jinja2 import TemplateError

    from guppyforge.sampling import Sampler
    from guppyforge.templating import environment

    topic = persona.topics.get("greeting")
    if topic is None:
        return []
    sampler = Sampler(persona, 0)
    out = [e.turns[0][1] for e in persona.examples if e.topic == "greeting" and e.turns]
    for say in topic.say:
        try:
            out.append(sampler.style(environment().from_string(say.text).render().strip()))
        except TemplateError:  # it uses grammar symbols
            pass
    if not out:
        out.append(sampler.conversation(0, topic="greeting").messages[-1]["content"])
    return [text for text in dict.fromkeys(out) if text]


class _Dumper(yaml.SafeDumper):
    """safe_dump that writes multi-line text as a readable `|` block (PyYAML itself falls back
    to quotes where a block cannot hold the text exactly, e.g. trailing spaces)."""

    def text(self, value: str) -> yaml.ScalarNode:
        return self.represent_scalar("tag:yaml.org,2002:str", value, "|" if "\n" in value else None)


_Dumper.add_representer(str, _Dumper.text)


def dump_yaml(data: Any) -> str:
    """YAML text of a mapping: keys in order, Unicode as is, long lines never folded."""
    return yaml.dump(data, Dumper=_Dumper, allow_unicode=True, sort_keys=False, width=1 << 20)


def write_atomic(path: Path, text: str) -> None:
    """Write a file whole or not at all: a temp file in the same folder, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; this one is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


_HEADER = """\
# {display}: a persona skeleton made by `guppyforge import-card {source}`. It validates, but it
# only knows how to greet. Next: read `notes` (the card's description: the character's voice),
# add a `grammar`, more `topics` and `probes` (docs/persona-format.md), then run
# `guppyforge validate {out}`. `extensions.character_card` keeps the card fields guppyforge
# does not use (scenario, lorebook...): `guppyforge export-card` puts them back on the card.
"""


def import_card(card_path: str | Path, out: str | Path | None = None, force: bool = False) -> Path:
    """Write the persona of a card file (see the module docstring); return the path written."""
    card_path = Path(card_path)
    card = read_card(card_path)
    ours = card["data"].get("extensions")
    ours = ours.get("guppyforge") if isinstance(ours, dict) else None
    ours = ours if isinstance(ours, dict) and isinstance(ours.get("persona"), dict) else {}
    persona = ours.get("persona") or card_to_persona(card)
    name = slugify(str(persona.get("name") or ""))  # an embedded name may not be a safe path
    out = Path(out) if out else Path("personas") / f"{name}.yaml"
    if out.exists() and not force:
        raise GuppyError(f"{out}: already exists. Pass --force to replace it, or --out NEW.yaml")
    if not ours:
        header = _HEADER.format(display=persona["display_name"], source=card_path.name, out=out)
        text = header + dump_yaml(persona)
    elif isinstance(ours.get("yaml"), str):  # the file itself: comments, `yes` as text... kept
        text = ours["yaml"]
    else:  # a tool that kept only the mapping still gets the same mapping back
        text = f"# Restored by `guppyforge import-card {card_path.name}`.\n{dump_yaml(persona)}"
    if len(text.encode()) > limits.MAX_FILE_BYTES:
        raise GuppyError(f"{card_path}: its persona would pass the 1 MiB limit (embedded images, "
                         "a large lorebook?). Remove them from the card and import it again")  # fmt: skip
    write_atomic(out, text)
    return out


def export_card(persona_path: str | Path, out: str | Path) -> Path:
    """Write a persona (a file, or a built-in's name) as a Character Card V2 JSON file."""
    from guppyforge.paths import builtin_persona
    from guppyforge.persona import load_persona

    path = Path(persona_path)
    persona = load_persona(path if path.exists() else builtin_persona(str(path)) or path)
    try:  # persona files hold JSON's types only (see yamlsafe), except NaN and infinity
        text = json.dumps(persona_to_card(persona), ensure_ascii=False, indent=2, allow_nan=False)
    except ValueError:
        raise GuppyError(f"{persona_path}: holds NaN or infinity, not JSON. Remove it") from None
    write_atomic(Path(out), text + "\n")
    return Path(out)
