"""How many distinct conversations a persona can make: counted by enumeration, never guessed.

For each topic: distinct prompts (user side), distinct replies (after style rules, never_say
removed), and distinct single-turn (prompt, reply) pairs. Symbols a question and its answer share
are bound once per conversation, so "worms? yes" only pairs with "do you like worms": pairs are
counted per value of the shared symbols. Enumeration stops at caps; a count that hit a cap is a
lower bound (`exact=False`). Counts treat draws as independent: the shuffle bag, which avoids
repeating an alternative inside one conversation, can make a few counted pairs unreachable.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from guppyforge.persona.conversations import CompiledTopic, Sampler, tidy
from guppyforge.persona.grammar import expand_all
from guppyforge.persona.templating import Compiled
from guppyforge.persona.types import Persona

SYMBOL_CAP = 5_000  # distinct values enumerated per symbol
OUTPUT_CAP = 20_000  # distinct strings enumerated per template (and per shared value)
ASSIGNMENT_CAP = 2_000  # values of the shared symbols tried per template
TOPIC_BUDGET = 9_000  # strings rendered per topic: keeps `validate` well under a second


@dataclass(frozen=True)
class TopicCapacity:
    """Distinct prompts, replies and (prompt, reply) pairs; exact=False means "at least"."""

    prompts: int
    replies: int
    conversations: int
    exact: bool


def capacity(persona: Persona) -> dict[str, TopicCapacity]:
    """Capacity of every topic of a persona (single-turn conversations)."""
    counter = _Counter(Sampler(persona))
    return {t.name: counter.topic(t) for t in counter.sampler.compiled.topics}


class _Counter:
    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.memo: dict = {}
        self.exact = True
        self.budget = self.share = TOPIC_BUDGET

    def values(self, name: str) -> tuple[list[str], bool]:
        vals, complete = self.sampler.grammar.values(name, SYMBOL_CAP, memo=self.memo)
        self.exact = self.exact and complete
        return vals, complete

    def topic(self, t: CompiledTopic) -> TopicCapacity:
        self.exact = True
        first = t.stages[0]
        replies_for: dict[tuple, set[str]] = {}

        def replies(key: tuple, says: tuple[int, ...]) -> set[str]:
            if (key, says) not in replies_for:
                fixed, out = dict(key), set()
                for s in says:
                    c = first.says[s][1]
                    out.update(self.outputs(c, {n: v for n, v in fixed.items() if n in c.symbols}))
                replies_for[key, says] = out
            return replies_for[key, says]

        # The budget is split in three phases (replies, prompts, pairs) and within a phase
        # between its calls, so no template or phase starves the others.
        everything = tuple(range(len(first.says)))
        self._phase(len(t.say))
        all_replies = len(replies((), everything))
        asked = set().union(*(c.symbols for _, c in t.ask))
        shared = sorted(asked & set().union(*(c.symbols for _, c in t.say)))
        plans = []
        for a, (_, c) in enumerate(t.ask):  # format 1.1: only the replies that fit the question
            says = tuple(first.replies_for(dict.fromkeys(first.ask_bind[a])))
            plans.append((c, [s for s in shared if s in c.symbols], says))
        self._phase(sum(min(ASSIGNMENT_CAP, self._combinations(mine)) for _, mine, _ in plans))
        keys_of: dict[str, set[tuple]] = {}  # prompt -> (shared values it implies, its replies)
        for c, mine, says in plans:
            for fixed in self._assignments(mine):
                key = tuple(sorted(fixed.items()))
                for prompt in self.outputs(c, fixed, reply=False):
                    keys_of.setdefault(prompt, set()).add((key, says))
        self._phase(len(t.say) * len(set().union(*keys_of.values())))
        pairs, single = 0, {}
        for keys in keys_of.values():
            if len(keys) == 1:
                key = next(iter(keys))
                single[key] = single.get(key, 0) + 1
            else:  # one prompt, made with several shared values: union its possible replies
                pairs += len(set().union(*(replies(*k) for k in keys)))
        pairs += sum(n * len(replies(*key)) for key, n in single.items())
        return TopicCapacity(len(keys_of), all_replies, pairs, self.exact)

    def _phase(self, calls: int) -> None:
        self.budget = TOPIC_BUDGET // 3
        self.share = max(1, self.budget // max(1, calls))

    def _combinations(self, names: list[str]) -> int:
        return math.prod(len(self.values(n)[0]) for n in names)

    def _assignments(self, names: list[str]):
        """Every combination of values for `names` (capped), as dicts."""
        lists = [self.values(n)[0] for n in names]
        for i, combo in enumerate(itertools.product(*lists)):
            if i >= ASSIGNMENT_CAP:
                self.exact = False
                return
            yield dict(zip(names, combo, strict=True))

    def outputs(self, c: Compiled, fixed: dict, reply: bool = True) -> dict[str, None]:
        """Distinct final texts of one template with some symbols fixed (as an ordered set)."""
        raw: dict[str, None] = {}
        cap = min(OUTPUT_CAP, self.budget, self.share)
        if cap <= 0:  # budget spent: what is counted so far stands as a lower bound
            self.exact = False
            return raw
        if c.parts is not None:
            # A symbol used once can range freely inside expand_all; one used twice must take
            # one value for both uses, so those are enumerated here.
            uses = [p[1] for p in c.parts if not isinstance(p, str) and not p[0]]
            twice = [s for s in dict.fromkeys(uses) if uses.count(s) > 1 and s not in fixed]
            for more in self._assignments(twice):
                done = expand_all(c.parts, {**fixed, **more}, self.values, raw, cap)
                self.exact = self.exact and done
        else:
            if c.picks:  # pick() inside Jinja logic: we try one value, so this is a floor
                self.exact = False
            free = [s for s in c.symbols if s not in fixed]
            first = {n: self.values(n)[0][:1] or [""] for n in c.picks}
            for more in self._assignments(free):
                raw[c.jinja.render({**fixed, **more, "pick": lambda n: first[n][0]})] = None
                if len(raw) >= cap:
                    self.exact = False
                    break
        self.budget -= len(raw) + 1  # +1: an empty enumeration still costs a call
        out: dict[str, None] = {}
        for text in raw:
            text = tidy(text)
            if reply:
                text = self.sampler.style(text)
                if self.sampler.banned(text):
                    continue
            out[text] = None
        return out
