"""The persona format: a parsed YAML file walked into a typed `Persona`, every error collected.

`load_persona(path)` is the door: safe YAML (yamlsafe.py), then this schema, then the checks
that need the whole persona (templates compile, symbols exist). `validate_persona` adds what
validate reports on top. Format versions 1.0-1.3 load; anything else gets an upgrade message.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

from guppyforge.defaults import ROWS
from guppyforge.errors import GuppyError
from guppyforge.persona import bounds
from guppyforge.persona.chat_rows import FORMATS, examples_path, examples_rows
from guppyforge.persona.checks import (
    pairing_problems,
    placeholder_warnings,
    reply_lints,
    sentence_warnings,
    smoke_test,
)
from guppyforge.persona.conversations import (
    Sampler,
    compile_persona,
    compile_say,
    remember_compiled,
)
from guppyforge.persona.forecast import (
    capacity,
    dry_warnings,
    fixed_follow_up_warnings,
    forecast,
)
from guppyforge.persona.templating import RESERVED, did_you_mean
from guppyforge.persona.types import (
    Alternative,
    Example,
    FollowUp,
    OffTopic,
    Persona,
    Probe,
    Report,
    Style,
    Symbol,
    Template,
    Topic,
    Variation,
)
from guppyforge.persona.yamlsafe import Doc, read_yaml

# --- The persona schema: walks a parsed YAML file and builds a `Persona`, collecting every error.
#
# Each error is one line, `file:line:col: key.path: problem. fix`, ready for `guppyforge validate`.
# Templates are only stored here; `load_persona` compiles them afterwards
# (conversations.compile_persona).

NEW_IN_1_4 = {"paraphrase", "textspeak", "drop", "runs"}  # variation kinds of format 1.4
_KEYS = {
    (): {
        "guppyforge",
        "name",
        "display_name",
        "summary",
        "author",
        "license",
        "version",
        "language",
        "tags",
        "notes",
        "extensions",
        "style",
        "grammar",
        "topics",
        "examples",
        "examples_file",
        "probes",
        "turns",
        "variation",
        "offtopic",
    },
    ("style",): {"case", "max_sentences", "never_say"},
    ("alternative",): {"text", "weight"},
    ("topic",): {"weight", "ask", "say", "follow_ups"},
    ("follow_up",): {"ask", "say"},
    ("example",): {"topic", "turns"},
    ("examples_file",): {"path", "format"},
    ("turn",): {"user", "assistant"},
    ("probe",): {"ask", "expect_any", "forbid"},
    ("variation",): {"share", "case", "punctuation", "typo", "filler", "name", "contraction"}
    | NEW_IN_1_4,
    ("offtopic",): {"share", "say"},
}
_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_NUMBER = re.compile(r"\d{1,6}(\.\d{1,6})?")


class Reader:
    """Walks the YAML data with the schema, collecting every error instead of stopping."""

    def __init__(self, doc: Doc):
        self.doc, self.errors, self.warnings = doc, [], []
        self.grammar_ok = True  # False: templates would only report symbols we had to drop

    def error(self, path: tuple, problem: str, fix: str, key: bool = False) -> None:
        self.errors.append(f"{self.doc.at(path, key)}: {_dotted(path)}: {problem}. {fix}")

    def mapping(self, path: tuple, value: Any, schema: tuple, required=()) -> dict:
        if not isinstance(value, dict):
            self.error(path, "must be a mapping (key: value lines)", "See docs/persona-format.md")
            return {}
        allowed = _KEYS[schema]
        for k in value:
            if k not in allowed:
                hint = did_you_mean(k, allowed) or f"Allowed: {', '.join(sorted(allowed))}"
                self.error((*path, k), f"unknown key '{k}'", hint, key=True)
        for k in required:
            if k not in value:
                self.error(path, f"missing required key '{k}'", f"Add `{k}:`")
        return value

    def text(self, path: tuple, value: Any, optional: bool = False) -> str:
        value = self.doc.text(path, value)
        if value is None and optional:
            return ""
        if not isinstance(value, str):
            self.error(path, f"must be text, not {_kind(value)}", "Write a string")
            return ""
        return value

    def texts(self, path: tuple, value: Any, nonempty: bool = False) -> tuple[str, ...]:
        if value is None and not nonempty:
            return ()
        if not isinstance(value, list) or (nonempty and not value):
            self.error(
                path,
                "must be a non-empty list" if nonempty else "must be a list",
                "Write [a, b] or one '- item' per line",
            )
            return ()
        return tuple(self.text((*path, i), v) for i, v in enumerate(value))

    def templates(self, path: tuple, value: Any) -> tuple[Template, ...]:
        return tuple(
            self.template((*path, i), t) for i, t in enumerate(self.texts(path, value, True))
        )

    def template(self, path: tuple, text: str, weight: float | None = None) -> Template:
        line, col = self.doc.marks.get(path, (1, 1))
        args = (text, line, col, _dotted(path), str(self.doc.path))
        return Template(*args) if weight is None else Alternative(*args, weight)

    def weight(self, path: tuple, value: Any) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not (math.isfinite(value) and value > 0)
        ):
            self.error(path, f"weight must be a number > 0, not {value!r}", "Write e.g. 2 or 0.5")
            return 1.0
        return float(value)

    def persona(self) -> Persona:
        data = self.doc.data
        for dup in self.doc.duplicates:
            self.error(dup, f"key '{dup[-1]}' appears twice", "Merge or rename one", key=True)
        spec = self._version(data.get("guppyforge"))
        if self.errors:  # a file of another version may use keys we do not know: stop here
            raise GuppyError(self.errors[0])
        d = self.mapping((), data, (), required=("name", "summary", "topics"))
        name = self.text(("name",), d.get("name", ""))
        if "name" in d and not _SLUG.fullmatch(name):
            self.error(
                ("name",), f"'{name}' is not a slug", "Use lowercase letters, digits, - and _"
            )
        extensions = d.get("extensions") or {}
        if not isinstance(extensions, dict):
            self.error(("extensions",), "must be a mapping", "Write `extensions: {}`")
        style = self._style(d.get("style") or {})
        before = len(self.errors)
        grammar = self._grammar(d.get("grammar") or {})
        self.grammar_ok = len(self.errors) == before
        topics = self._topics(d.get("topics") or {}) if "topics" in d else {}
        from_file, examples_file = self._examples_file(d.get("examples_file"), topics, spec)
        t = {
            k: self.text((k,), d.get(k), optional=True)
            for k in (
                "display_name",
                "summary",
                "author",
                "license",
                "version",
                "language",
                "notes",
            )
        }
        return Persona(
            name=name,
            display_name=t["display_name"] or name,
            summary=t["summary"],
            style=style,
            grammar=grammar,
            topics=topics,
            examples=self._examples(d.get("examples"), topics) + from_file,
            probes=self._probes(d.get("probes"), style),
            author=t["author"],
            license=t["license"],
            version=t["version"],
            language=t["language"] or "en",
            tags=self.texts(("tags",), d.get("tags")),
            notes=t["notes"],
            extensions=extensions if isinstance(extensions, dict) else {},
            path=self.doc.path,
            sha256=self.doc.sha256,
            raw=data,
            spec=spec,
            turns=self._turns(d.get("turns"), spec),
            variation=self._variation(d.get("variation"), spec, "variation" in d),
            offtopic=self._offtopic(d.get("offtopic"), spec),
            examples_file=examples_file,
        )

    def _version(self, v: Any) -> tuple[int, int]:
        """The declared format as (major, minor); "1.1" is read as written, not as a float."""
        path = ("guppyforge",)
        if v is None:
            self.error(
                (),
                "missing the spec version key 'guppyforge'",
                "Add `guppyforge: 1` "
                f"as the first line (`{bounds.SPEC_VERSION}` for the newest features)",
            )
            return (1, 0)
        text = self.doc.texts.get(path, v) if not isinstance(v, str) else v
        text = text.strip() if isinstance(text, str) else None
        if text in bounds.SPEC_VERSIONS:
            return bounds.SPEC_VERSIONS[text]
        known = " or ".join(dict.fromkeys(k for k in bounds.SPEC_VERSIONS if k != "1.0"))
        if text and _NUMBER.fullmatch(text) and float(text) > float(bounds.SPEC_VERSION):
            self.error(
                path,
                f"this file uses persona format {text}; this guppyforge reads up "
                f"to {bounds.SPEC_VERSION}",
                "Upgrade: pip install -U guppyforge",
            )
        else:  # a long or odd value is shortened: the error must stay one readable line
            shown = repr(v if text is None else text)
            shown = shown if len(shown) <= 24 else f"{shown[:20]}...' ({len(str(text)):,} chars)"
            self.error(
                path,
                f"spec version must be {known}, not {shown}",
                f"Write `guppyforge: {bounds.SPEC_VERSION}`",
            )
        return (1, 0)

    def _turns(self, value: Any, spec: tuple[int, int]) -> tuple[tuple[int, float], ...]:
        """`turns: {1: 6, 2: 3, 3: 1}`: how often a conversation has 1, 2, 3... user turns."""
        path = ("turns",)
        if value is None:
            return ()
        if spec < (1, 1):
            self.error(
                path,
                "`turns` needs persona format 1.1",
                "Write `guppyforge: 1.1` as the first line",
                key=True,
            )
            return ()
        if not isinstance(value, dict) or not value:
            self.error(path, "must be a mapping of turns: weight", "Write e.g. {1: 6, 2: 3, 3: 1}")
            return ()
        out = []
        for k, w in value.items():
            n = int(k) if str(k).isdigit() and len(str(k)) <= 3 else 0
            if not 1 <= n <= bounds.MAX_TURNS:
                self.error(
                    (*path, k),
                    f"'{k}' is not a number of turns from 1 to {bounds.MAX_TURNS}",
                    "Use keys 1, 2, 3...",
                    key=True,
                )
                continue
            out.append((n, self.weight((*path, k), w)))
        return tuple(sorted(out))

    def _needs(self, key: str, spec: tuple[int, int], version: tuple[int, int]) -> bool:
        """False (with the error) when `key` is newer than the file's declared format."""
        if spec >= version:
            return True
        v = ".".join(map(str, version))
        self.error(
            (key,),
            f"`{key}` needs persona format {v}",
            f"Write `guppyforge: {v}` as the first line",
            key=True,
        )
        return False

    def _share(self, path: tuple, value: Any, most: float = 1.0) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= most:
            self.error(
                path, f"must be a number from 0 to {most:g}, not {value!r}", "Write e.g. 0.3"
            )
            return 0.0
        return float(value)

    def _variation(self, value: Any, spec: tuple[int, int], given: bool) -> Variation:
        """`variation: off`, or chances per kind of change: `{share: 0.5, typo: 0.25, ...}`."""
        if not given:
            return Variation()  # on by default, in files of every version
        if not self._needs("variation", spec, (1, 2)):
            return Variation()
        if value is False or value == "off" or value is None:
            return Variation(share=0.0)
        v = self.mapping(("variation",), value, ("variation",))
        for k in sorted(set(v) & NEW_IN_1_4):  # the kinds of change 1.4 added
            if spec < (1, 4):
                self.error(
                    ("variation", k),
                    f"`variation.{k}` needs persona format 1.4",
                    "Write `guppyforge: 1.4` as the first line",
                    key=True,
                )
        return Variation(
            **{
                k: self._share(("variation", k), x)
                for k, x in v.items()
                if k in _KEYS[("variation",)]
            }
        )

    def _offtopic(self, value: Any, spec: tuple[int, int]) -> OffTopic | None:
        """`offtopic: {share: 0.08, say: [...]}`: how the character deflects the shipped pool."""
        if value is None or not self._needs("offtopic", spec, (1, 2)):
            return None
        o = self.mapping(("offtopic",), value, ("offtopic",), required=("say",))
        share = self._share(("offtopic", "share"), o.get("share", 0.08), bounds.MAX_OFFTOPIC_SHARE)
        return OffTopic(share, self.templates(("offtopic", "say"), o.get("say")))

    def _style(self, value: Any) -> Style:
        s = self.mapping(("style",), value, ("style",))
        case = self.text(("style", "case"), s.get("case", "keep"))
        if case not in ("lower", "upper", "keep"):
            hint = did_you_mean(case, ("lower", "upper", "keep")) or "Write `case: lower`"
            self.error(("style", "case"), f"must be lower, upper or keep, not '{case}'", hint)
        n = s.get("max_sentences")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            self.error(
                ("style", "max_sentences"),
                f"must be a whole number >= 1, not {n!r}",
                "Write e.g. 3, or remove it",
            )
            n = None
        never = self.texts(("style", "never_say"), s.get("never_say"))
        return Style(case, n, tuple(p.lower() for p in never if p.strip()))

    def _grammar(self, value: Any) -> dict[str, Symbol]:
        if not isinstance(value, dict):
            self.error(("grammar",), "must be a mapping of symbol: [alternatives]", "See the docs")
            return {}
        g = value
        if len(g) > bounds.MAX_SYMBOLS:
            self.error(
                ("grammar",),
                f"{len(g):,} symbols, more than the {bounds.MAX_SYMBOLS:,} limit",
                "Split the persona",
            )
            return {}
        out = {}
        for name, alts in g.items():
            path = ("grammar", name)
            if not name.isidentifier() or name in RESERVED:
                self.error(
                    path,
                    f"'{name}' cannot be a symbol name",
                    "Use letters, digits and _, "
                    "not starting with a digit (and not pick/true/false/none)",
                    key=True,
                )
            if isinstance(alts, list) and len(alts) > bounds.MAX_ALTERNATIVES:
                self.error(
                    path,
                    f"{len(alts):,} alternatives, more than the {bounds.MAX_ALTERNATIVES:,} limit",
                    "Split the symbol",
                )
                continue
            items = []
            if not isinstance(alts, list) or not alts:
                self.error(path, "must be a non-empty list of alternatives", "Write [a, b, c]")
                alts = []
            for i, alt in enumerate(alts):
                p, weight = (*path, i), 1.0
                if isinstance(alt, dict):
                    self.mapping(p, alt, ("alternative",), required=("text",))
                    weight = self.weight((*p, "weight"), alt.get("weight", 1))
                    p, alt = (*p, "text"), alt.get("text", "")
                items.append(self.template(p, self.text(p, alt), weight))
            out[name] = Symbol(name, tuple(items), f"{self.doc.at(path, True)}: {_dotted(path)}")
        return out

    def _topics(self, value: Any) -> dict[str, Topic]:
        if not isinstance(value, dict) or not value:
            self.error(
                ("topics",),
                "must be a mapping with at least one topic",
                "Add a topic with ask: and say: lists",
            )
            return {}
        out = {}
        for name, t in value.items():
            path = ("topics", name)
            if "/" in name or not name.strip():
                self.error(path, f"'{name}' cannot be a topic name", "Avoid '/'", key=True)
            t = self.mapping(path, t, ("topic",), required=("ask", "say"))
            follow = []
            for i, f in enumerate(t.get("follow_ups") or []):
                f = self.mapping(
                    (*path, "follow_ups", i), f, ("follow_up",), required=("ask", "say")
                )
                fp = (*path, "follow_ups", i)
                ask, say = (self.templates((*fp, k), f.get(k)) for k in ("ask", "say"))
                follow.append(FollowUp(ask, say))
            if t.get("follow_ups") is not None and not isinstance(t["follow_ups"], list):
                self.error((*path, "follow_ups"), "must be a list", "Write '- ask: ...' items")
            ask, say = (self.templates((*path, k), t.get(k)) for k in ("ask", "say"))
            weight = self.weight((*path, "weight"), t.get("weight", 1))
            out[name] = Topic(name, weight, ask, say, tuple(follow))
        return out

    def _examples(self, value: Any, topics: dict) -> tuple[Example, ...]:
        out = []
        for i, ex in enumerate(value or []) if isinstance(value, list) else ():
            path = ("examples", i)
            ex = self.mapping(path, ex, ("example",), required=("turns",))
            topic = ex.get("topic")
            if topic is not None and topic not in topics:
                hint = did_you_mean(str(topic), topics) or f"Use one of: {', '.join(topics)}"
                self.error((*path, "topic"), f"unknown topic '{topic}'", hint)
            turns = []
            for j, turn in enumerate(ex.get("turns") or []):
                tp = (*path, "turns", j)
                turn = self.mapping(tp, turn, ("turn",), required=("user", "assistant"))
                pair = tuple(self.text((*tp, k), turn.get(k, "")) for k in ("user", "assistant"))
                turns.append(pair)
            line = self.doc.marks.get(path, (0, 0))[0]
            out.append(Example(topic, tuple(turns), line))
        if value is not None and not isinstance(value, list):
            self.error(("examples",), "must be a list", "Write '- turns: ...' items")
        return tuple(out)

    def _examples_file(self, value: Any, topics: dict, spec: tuple[int, int]):
        """1.3: `examples_file: hand.jsonl` (or `{path: hand.csv, format: qa}`): rows of
        hand-written conversations in any shape chat_rows.py reads, mixed in as `examples`."""
        path = ("examples_file",)
        if value is None or not self._needs("examples_file", spec, (1, 3)):
            return (), None
        forced = None
        if isinstance(value, dict):
            v = self.mapping(path, value, ("examples_file",), required=("path",))
            forced = v.get("format")
            if forced is not None and forced not in FORMATS:
                hint = did_you_mean(str(forced), FORMATS) or f"Use one of: {', '.join(FORMATS)}"
                self.error((*path, "format"), f"'{forced}' is not a format guppyforge reads", hint)
                return (), None
            path, value = (*path, "path"), v.get("path")
        found = examples_path(self.doc.path, value)
        if isinstance(found, str):
            problem, _, fix = found.partition(". ")
            self.error(path, problem, fix)
            return (), None
        rel, target = found
        try:
            rows, bad = examples_rows(
                target, rel, forced, bounds.MAX_EXAMPLES_FILE_BYTES, bounds.MAX_EXAMPLES_FILE_ROWS
            )
            digest = hashlib.sha256(target.read_bytes()).hexdigest()
        except GuppyError as e:
            self.errors.append(f"{self.doc.at(path)}: {_dotted(path)}: {e}")
            return (), None
        except OSError as e:
            self.error(path, f"'{rel}' cannot be read ({e.strerror})", "Check the file")
            return (), None
        for n, topic, _ in rows:
            if topic and topic not in topics:
                hint = did_you_mean(topic, topics) or f"Use one of: {', '.join(topics)}"
                bad.append(f"{rel}: row {n}: unknown topic '{topic}'. {hint}")
        at = self.doc.at(path)
        for line in bad[: bounds.MAX_ROW_ERRORS]:
            self.errors.append(f"{at}: {_dotted(path)}: {line}")
        if len(bad) > bounds.MAX_ROW_ERRORS:
            more = len(bad) - bounds.MAX_ROW_ERRORS
            self.errors.append(f"{at}: {_dotted(path)}: ... and {more:,} more bad rows")
        line = self.doc.marks.get(path, (0, 0))[0]
        examples = tuple(
            Example(topic or None, tuple((u, a) for (_, u), (_, a) in _pairs(turns)), line, rel, n)
            for n, topic, turns in rows
        )
        return examples, (rel, digest)

    def _probes(self, value: Any, style: Style) -> tuple[Probe, ...]:
        out = []
        for i, p in enumerate(value or []) if isinstance(value, list) else ():
            path = ("probes", i)
            p = self.mapping(path, p, ("probe",), required=("ask",))
            expect = self.texts((*path, "expect_any"), p.get("expect_any"))
            forbid = self.texts((*path, "forbid"), p.get("forbid"))
            forbid = tuple(dict.fromkeys([f.lower() for f in forbid] + list(style.never_say)))
            line = self.doc.marks.get(path, (0, 0))[0]
            out.append(Probe(self.text((*path, "ask"), p.get("ask", "")), expect, forbid, line))
        if value is not None and not isinstance(value, list):
            self.error(("probes",), "must be a list", "Write '- ask: ...' items")
        return tuple(out)


def _pairs(turns: list[tuple[str, str]]) -> list[tuple[tuple, tuple]]:
    """(user, assistant) message pairs of a checked conversation (it alternates, user first)."""
    return list(zip(turns[0::2], turns[1::2], strict=True))


def _dotted(path: tuple) -> str:
    out = ""
    for k in path:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else str(k))
    return out or "(top level)"


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", type(None): "empty"}.get(type(value), repr(value))


# --- Load a persona YAML file into typed, frozen objects, checking everything a user can get wrong.
#
# `load_persona` raises the first problem as a one-line `GuppyError`; `validate_persona` collects
# every problem, the warnings and the capacity report for `guppyforge validate`. The format is
# documented in docs/persona-format.md.


def load_persona(path: str | Path) -> Persona:
    """Load and fully check a persona file; raise GuppyError with the first problem."""
    persona, errors, _, _ = _load(path)
    if errors:
        raise GuppyError(errors[0])
    return persona


def validate_persona(path: str | Path, target: int = ROWS) -> Report:
    """Check a persona and report every problem, every warning and its capacity."""
    try:
        persona, errors, warnings, doc = _load(path)
    except GuppyError as exc:  # the file could not be read as YAML at all
        return Report([str(exc)], [])
    if errors:
        return Report(errors, warnings)
    errors += smoke_test(persona)
    if errors:
        return Report(errors, warnings)
    sampler = Sampler(persona)
    warnings += sentence_warnings(sampler) + placeholder_warnings(persona, doc.at)
    warnings += reply_lints(sampler.compiled)
    table = capacity(persona)
    total = sum(c.conversations for c in table.values())
    if total < target:
        warnings.append(
            f"{doc.at(('topics',), key=True)}: capacity: {total:,} distinct conversations, fewer "
            f"than the {target:,} requested. Add alternatives or templates"
        )
    predicted = forecast(persona, target, sampler=sampler)
    warnings += dry_warnings(predicted.pairs, target) + fixed_follow_up_warnings(predicted)
    weights = sum(t.weight for t in persona.topics.values())
    for name, t in persona.topics.items():
        share = target * t.weight / weights
        rows = predicted.rows[name]
        if abs(rows - share) > max(0.10 * share, 10):  # as generate warns, but before drawing
            where = t.ask[0] if t.ask else None
            at = f"{where.file}:{where.line}:{where.column}" if where else str(persona.path)
            warnings.append(
                f"{at}: topics.{name}: about {rows:,} rows predicted for "
                f"-n {target:,}, but its weight asks for {round(share):,}. Fix its "
                "dry pairs (above), or change its weight"
            )
    return Report(errors, warnings, table, predicted, persona)


def _load(path: str | Path) -> tuple[Persona, list[str], list[str], object]:
    r = Reader(read_yaml(path))
    persona = r.persona()
    # Templates are checked even after other schema errors, so one run reports every problem.
    compiled = compile_persona(persona, r.errors.append if r.grammar_ok else lambda e: None)
    for _, c in compile_say(persona, r.errors.append if r.grammar_ok else lambda e: None):
        compiled.used_symbols.update(c.symbols, c.picks)
    if not r.errors:  # pairing only means something once every template compiled
        errors, warnings = pairing_problems(compiled, persona.spec >= (1, 1))
        r.errors += errors
        r.warnings += warnings
    if not r.errors:  # after an error, "unused" is likely noise (a refused template uses nothing)
        used = set(compiled.used_symbols)
        for name, sym in persona.grammar.items():
            if name not in used:
                r.warnings.append(f"{sym.where}: symbol is never used. Use it or delete it")
        remember_compiled(persona, compiled)  # a Sampler of this persona need not parse again
    return persona, r.errors, r.warnings, r.doc
