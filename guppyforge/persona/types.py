"""The persona as typed, frozen objects: what a loaded persona file is.

Every other persona module (schema, conversations, capacity, cards) speaks in these types, and
this module imports none of them, so the layer has no import cycles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


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
class Variation:
    """1.2: how often the user's side is varied the way people type (persona/variation.py).

    `share` is the chance a user message is varied at all; the others are the chances of each
    kind of change in a varied message. `share: 0` (or `variation: off`) turns it off.
    """

    share: float = 0.5
    case: float = 0.3
    punctuation: float = 0.35
    typo: float = 0.25
    filler: float = 0.3
    name: float = 0.15
    contraction: float = 0.4
    # 1.4: the other usual phrasings of a question (personas/frames/), text-speak ("u", "r",
    # "pls"), a dropped helper verb ("you ok"), a stretched word ("sooo"); rates: variation.py.
    paraphrase: float = 0.35
    textspeak: float = 0.3
    drop: float = 0.15
    runs: float = 0.1


@dataclass(frozen=True)
class OffTopic:
    """1.2: how the character meets prompts outside its topics (persona/conversations.py)."""

    share: float
    say: tuple[Template, ...]


@dataclass(frozen=True)
class Example:
    topic: str | None
    turns: tuple[tuple[str, str], ...]  # (user, assistant) pairs
    line: int  # of the inline example; of the `examples_file:` key for a row of that file
    file: str = ""  # 1.3: the examples_file the row is in, relative to the persona
    row: int = 0  # its row there, counting from 1

    @property
    def id_tail(self) -> str:
        """Its template id's tail: `@L140` inline, `@hand.jsonl#12` from the examples_file."""
        return f"@{self.file}#{self.row}" if self.file else f"@L{self.line}"


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
    spec: tuple[int, int] = (1, 0)  # the format version the file declares: (1, 0), (1, 1) or (1, 2)
    turns: tuple[tuple[int, float], ...] = ()  # 1.1: (user turns, weight) mix; () = one turn
    variation: Variation = Variation()  # on by default, for every format version
    offtopic: OffTopic | None = None  # 1.2: None = no off-topic rows
    examples_file: tuple[str, str] | None = None  # 1.3: (path relative to the persona, sha256)


@dataclass
class Report:
    """Everything `validate` prints: error lines, warning lines, capacity per topic."""

    errors: list[str]
    warnings: list[str]
    capacity: dict = field(default_factory=dict)  # topic -> capacity.TopicCapacity
    forecast: object = None  # forecast.Forecast: what generate will do with --target rows
    persona: Persona | None = None  # the persona checked, when it loaded
