"""Load a persona YAML file into typed, frozen objects, checking everything a user can get wrong.

`load_persona` raises the first problem as a one-line `GuppyError`; `validate_persona` collects
every problem, the warnings and the capacity report for `guppyforge validate`. The format is
documented in docs/persona-format.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from guppyforge import limits
from guppyforge.errors import GuppyError
from guppyforge.yamlsafe import read_yaml


@dataclass(frozen=True)
class Template:
    """One text from the file (a template or grammar alternative) and where it was written."""

    text: str
    line: int
    column: int
    key: str  # dotted key path, e.g. "topics.food.ask[2]"
    file: str

    @property
    def where(self) -> str:
        """The `file:line:col: key.path` prefix of an error about this text."""
        return f"{self.file}:{self.line}:{self.column}: {self.key}"


@dataclass(frozen=True)
class Alternative(Template):
    """A grammar alternative: a template that may only use `{{ name | filter }}`, with a weight."""

    weight: float = 1.0


@dataclass(frozen=True)
class Symbol:
    name: str
    alternatives: tuple[Alternative, ...]
    where: str


@dataclass(frozen=True)
class FollowUp:
    ask: tuple[Template, ...]
    say: tuple[Template, ...]


@dataclass(frozen=True)
class Topic:
    name: str
    weight: float
    ask: tuple[Template, ...]
    say: tuple[Template, ...]
    follow_ups: tuple[FollowUp, ...] = ()


@dataclass(frozen=True)
class Style:
    case: str = "keep"  # lower | upper | keep
    max_sentences: int | None = None
    never_say: tuple[str, ...] = ()


@dataclass(frozen=True)
class Example:
    topic: str | None
    turns: tuple[tuple[str, str], ...]  # (user, assistant) pairs
    line: int


@dataclass(frozen=True)
class Probe:
    ask: str
    expect_any: tuple[str, ...]
    forbid: tuple[str, ...]  # includes style.never_say
    line: int


@dataclass(frozen=True)
class Persona:
    """A loaded persona. `raw` is the file's data as plain dicts/lists (for exports)."""

    name: str
    display_name: str
    summary: str
    style: Style
    grammar: dict[str, Symbol]
    topics: dict[str, Topic]
    examples: tuple[Example, ...] = ()
    probes: tuple[Probe, ...] = ()
    author: str = ""
    license: str = ""
    version: str = ""
    language: str = "en"
    tags: tuple[str, ...] = ()
    notes: str = ""
    extensions: dict = field(default_factory=dict)
    path: Path = Path("persona.yaml")
    sha256: str = ""
    raw: dict = field(default_factory=dict)


@dataclass
class Report:
    """Everything `validate` prints: error lines, warning lines, capacity per topic."""

    errors: list[str]
    warnings: list[str]
    capacity: dict = field(default_factory=dict)  # topic -> capacity.TopicCapacity


def load_persona(path: str | Path) -> Persona:
    """Load and fully check a persona file; raise GuppyError with the first problem."""
    persona, errors, _ = _load(path)
    if errors:
        raise GuppyError(errors[0])
    return persona


def validate_persona(path: str | Path, target: int = limits.DEFAULT_TARGET) -> Report:
    """Check a persona and report every problem, every warning and its capacity."""
    try:
        persona, errors, warnings = _load(path)
    except GuppyError as exc:  # the file could not be read as YAML at all
        return Report([exc.format_message()], [])
    if errors:
        return Report(errors, warnings)
    from guppyforge.capacity import capacity
    from guppyforge.sampling import smoke_test

    errors += smoke_test(persona)
    if errors:
        return Report(errors, warnings)
    table = capacity(persona)
    total = sum(c.conversations for c in table.values())
    if total < target:
        warnings.append(f"{persona.path}: capacity: {total:,} distinct conversations, fewer "
                        f"than the {target:,} requested. Add alternatives or templates")  # fmt: skip
    else:  # enough in all, but a topic's weight may ask it for more than it can make
        weights = sum(t.weight for t in persona.topics.values())
        for name, t in persona.topics.items():
            share = round(target * t.weight / weights)
            if table[name].conversations < share:
                warnings.append(f"{persona.path}: topics.{name}: {table[name].conversations:,} "
                                f"distinct conversations, but its weight asks for {share:,} of "
                                f"{target:,}. Add alternatives or lower its weight")  # fmt: skip
    return Report(errors, warnings, table)


def _load(path: str | Path) -> tuple[Persona, list[str], list[str]]:
    from guppyforge.persona_schema import Reader

    r = Reader(read_yaml(path))
    persona = r.persona()
    from guppyforge.sampling import compile_persona

    # Templates are checked even after other schema errors, so one run reports every problem.
    compiled = compile_persona(persona, r.errors.append if r.grammar_ok else lambda e: None)
    if not r.errors:  # after an error, "unused" is likely noise (a refused template uses nothing)
        used = set(compiled.used_symbols)
        for name, sym in persona.grammar.items():
            if name not in used:
                r.warnings.append(f"{sym.where}: symbol is never used. Use it or delete it")
    return persona, r.errors, r.warnings
