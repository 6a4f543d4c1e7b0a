"""Which replies answer which questions: the pairing rule of persona format 1.1.

A symbol that some question of a step states (`do you like {{ food }}`) is an *echo* when a reply
of that step reads it: "{{ food }}? yes" only makes sense after a question that named the food.
In format 1.1 a reply is paired only with questions that state every symbol it echoes; a symbol
no question of the step states is the character's own (picked for the reply, as in format 1),
and a symbol read under `is defined` is optional: the test is true exactly when the question
stated it. Format 1 pairs every question with every reply; `validate` warns where that makes a
reply echo a value its question never stated.
"""

from __future__ import annotations

from dataclasses import dataclass

from guppyforge.persona.templating import Compiled
from guppyforge.persona.types import Template

Side = list[tuple[Template, Compiled]]


@dataclass
class Stage:
    """One step of a topic's conversations (the first question, or a follow-up), paired."""

    asks: Side
    says: Side
    ask_bind: list[tuple[str, ...]]  # symbols each question binds for the conversation
    say_bind: list[tuple[str, ...]]  # symbols each reply binds (its own, never echoes)
    say_need: list[frozenset[str]]  # symbols each reply echoes: they must be bound already

    def fits(self, s: int, bound: dict) -> bool:
        """True when reply `s` may answer a conversation with these values bound."""
        need = self.say_need[s]
        return not need or need <= bound.keys()

    def replies_for(self, bound: dict) -> list[int]:
        """The replies that may answer, given what the conversation has stated."""
        return [s for s in range(len(self.says)) if self.fits(s, bound)]


def stated(c: Compiled) -> tuple[str, ...]:
    """Symbols a template states for sure (a name only tested with `is defined` is not)."""
    return tuple(n for n in c.symbols if n not in c.tested)


def make_stage(asks: Side, says: Side, also_asked: set[str], strict: bool) -> Stage:
    """Pair one step. `also_asked`: symbols earlier questions of the topic may have stated."""
    if not strict:  # format 1: every question with every reply, every read binds
        return Stage(asks, says, [c.symbols for _, c in asks], [c.symbols for _, c in says],
                     [frozenset()] * len(says))  # fmt: skip
    asked = also_asked.union(*(stated(c) for _, c in asks))
    need = [frozenset(n for n in stated(c) if n in asked) for _, c in says]
    own = [tuple(n for n in stated(c) if n not in asked) for _, c in says]
    return Stage(asks, says, [stated(c) for _, c in asks], own, need)


def first_pairs(stage: Stage, offsets: tuple[int, int]) -> list[tuple[int, int]]:
    """The (ask, say) cells of a first step in the order conversations visit them.

    The walk of format 1 (every question in turn, the replies shifting once per round) with the
    cells that do not pair left out, so a format 1 file keeps its exact sequence.
    """
    n_ask, n_say = len(stage.asks), len(stage.says)
    off_ask, off_say = offsets
    out = []
    for cell in range(n_ask * n_say):
        a, s = (cell + off_ask) % n_ask, (cell // n_ask + off_say) % n_say
        if stage.fits(s, dict.fromkeys(stage.ask_bind[a])):
            out.append((a, s))
    return out


def check(topic_name: str, stages: list[Stage], strict: bool) -> tuple[list[str], list[str]]:
    """(errors, warnings) about pairing: replies no question fits, questions with no reply."""
    errors: list[str] = []
    warnings: list[str] = []
    first_asked = set().union(*(stated(c) for _, c in stages[0].asks)) if stages else set()
    for k, st in enumerate(stages):
        if not strict:
            warnings += _echo_warnings(st, first_asked if k else set())
            continue
        bound_max = dict.fromkeys(first_asked | set().union(*map(set, st.ask_bind)))
        for s, (t, _) in enumerate(st.says):
            if k == 0 and not any(st.fits(s, dict.fromkeys(b)) for b in st.ask_bind):
                errors.append(f"{t.where}: echoes {_names(st.say_need[s])}, which no single "
                              "question of the topic states, so it can never be used. Use "
                              "pick('name') for a value of its own, or add a question")  # fmt: skip
            elif k and not st.fits(s, bound_max):
                errors.append(f"{t.where}: echoes {_names(st.say_need[s])}, which no question "
                              "before it states. Use pick('name') for a value of its own")  # fmt: skip
        if k == 0:
            for a, (t, _) in enumerate(st.asks):
                if not st.replies_for(dict.fromkeys(st.ask_bind[a])):
                    errors.append(f"{t.where}: no reply of topic '{topic_name}' fits this "
                                  "question: each echoes a symbol it does not state. Add a "
                                  "reply that echoes nothing it leaves out")  # fmt: skip
    return errors, warnings


def _echo_warnings(st: Stage, before: set[str]) -> list[str]:
    """Format 1: a reply reading a symbol that some questions state and others do not."""
    out = []
    stated_by = [set(stated(c)) | before for _, c in st.asks]
    asked = set().union(*stated_by) if stated_by else set()
    for t, c in st.says:
        for name in stated(c):
            if name not in asked:
                continue  # no question states it: the character's own value
            missing = [a for a, s in enumerate(stated_by) if name not in s]
            if missing:
                q = st.asks[missing[0]][0]
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                out.append(f"{t.where}: reads {{{{ {name} }}}}, but the question at line "
                           f"{q.line}{more} never states it, so this reply names a {name} the "
                           "user never said. Write `guppyforge: 1.1` to pair replies only with "
                           "questions that state what they echo, or split the topic")  # fmt: skip
                break
    return out


def _names(names) -> str:
    return ", ".join(f"{{{{ {n} }}}}" for n in sorted(names))
