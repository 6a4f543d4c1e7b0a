"""The grammar: named symbols with weighted alternatives, expanded with a per-conversation shuffle bag.

Each alternative is parsed once into parts (text, or a reference to another symbol with filters).
Before any sampling the grammar is analysed: which symbols can finish at all (a productive-symbol
fixpoint), how many nested levels and how many expansions each needs at least. Expansion is then
bounded by `bounds.MAX_GRAMMAR_DEPTH` and `bounds.MAX_GRAMMAR_WORK` without ever failing at random.
"""

from __future__ import annotations

import heapq
import itertools
import random
from bisect import bisect
from collections.abc import Callable
from dataclasses import dataclass, field

from guppyforge.errors import GuppyError
from guppyforge.persona import bounds

INF = float("inf")
_BELOW_1 = 1.0 - 2**-53
_DEPTH = bounds.MAX_GRAMMAR_DEPTH
SMALL = 64  # symbols with more alternatives than this draw in O(log n) (see Draw._choose_big)


@dataclass
class Rule:
    """One compiled symbol: its alternatives as parts, their cumulative weights, and analysis."""

    name: str
    alts: list  # each: a str (plain text) or a tuple of parts (see templating.Compiled)
    weights: list[float]
    where: str  # "file:line:col: grammar.name" for error messages
    cum: list[float] = field(default_factory=list)
    heights: list[float] = field(default_factory=list)  # nested levels each alternative needs
    deepest: float = 0.0
    fitting: dict = field(default_factory=dict)  # room -> (alternatives that fit, their cum)

    def refs(self, i: int) -> list[str]:
        """Symbols referenced by alternative i, once per occurrence."""
        alt = self.alts[i]
        return [] if isinstance(alt, str) else [p[1] for p in alt if not isinstance(p, str)]


class Grammar:
    """Compiled symbols plus their analysis: `height`, `work` (inf = can never finish)."""

    def __init__(self, rules: dict[str, Rule]):
        self.rules = rules
        self.height = _least_cost(rules, lambda vals: 1 + max(vals, default=0))
        self.work = _least_cost(rules, lambda vals: 1 + sum(vals))
        self._most: dict[tuple[str, int], int] = {}
        for rule in rules.values():
            rule.cum = list(itertools.accumulate(rule.weights))
            rule.heights = [
                1 + max((self.height.get(r, INF) for r in rule.refs(i)), default=0)
                for i in range(len(rule.alts))
            ]
            rule.deepest = max(rule.heights, default=INF)

    def most(self, name: str, room: int = bounds.MAX_GRAMMAR_DEPTH) -> int:
        """The most expansions one draw of `name` can take with `room` levels left (the depth
        limit stops recursion), saturating just past MAX_MESSAGE_WORK. What bounds the time a
        message costs, where `work` (the least) only says whether it can finish."""
        cap = bounds.MAX_MESSAGE_WORK + 1
        memo = self._most
        if (name, room) in memo:
            return memo[name, room]
        rule, out = self.rules[name], 1
        if room >= 1 and name in self.height:
            for i in range(len(rule.alts)):
                if rule.heights[i] <= room:
                    refs = rule.refs(i)
                    out = max(out, 1 + sum(self.most(r, room - 1) for r in refs))
                    if out >= cap:
                        break
        memo[name, room] = min(out, cap)
        return memo[name, room]

    def problems(self) -> list[tuple[str, str, str]]:
        """(where, problem, fix) for symbols that never finish or pass a limit.

        One line per kind: in a loop every symbol is stuck, and every caller of a too-deep symbol
        is too deep too, so the worst one is named and the others listed after it.
        """
        depth, work = bounds.MAX_GRAMMAR_DEPTH, bounds.MAX_GRAMMAR_WORK
        never = [n for n in self.rules if n not in self.height]
        deep = [n for n in self.rules if self.height.get(n, 0) > depth]
        heavy = [n for n in self.rules if n not in never + deep and self.work[n] > work]
        out = []
        if never:
            where, also = self._worst(never, lambda n: 0)
            out.append(
                (
                    where,
                    f"can never finish: every alternative leads back into a loop{also}",
                    "Add an alternative of plain text",
                )
            )
        if deep:
            where, also = self._worst(deep, self.height.get)
            out.append(
                (
                    where,
                    f"needs {max(map(self.height.get, deep)):g} nested symbols, more "
                    f"than the limit of {depth}{also}",
                    "Make the grammar flatter",
                )
            )
        if heavy:
            where, also = self._worst(heavy, self.work.get)
            out.append(
                (
                    where,
                    f"needs {max(map(self.work.get, heavy)):,g} expansions, more than "
                    f"the limit of {work:,}{also}",
                    "Make the grammar smaller",
                )
            )
        return out

    def _worst(self, names: list[str], cost: Callable) -> tuple[str, str]:
        worst = max(names, key=cost)
        others = [n for n in names if n != worst]
        listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        return self.rules[worst].where, f" (so do {listed})" if others else ""

    def values(self, name: str, cap: int, depth: int = 1, memo: dict | None = None):
        """Distinct strings `name` can expand to: (list, complete). Stops at `cap` strings."""
        memo = {} if memo is None else memo
        rule = self.rules[name]
        room = bounds.MAX_GRAMMAR_DEPTH - depth + 1
        key = (name, min(room, rule.deepest))  # deeper room changes nothing once all alts fit
        if key in memo:
            return memo[key]
        memo[key] = ([], False)  # a recursive reference in progress contributes nothing
        seen: dict[str, None] = {}
        complete = True
        for i, alt in enumerate(rule.alts):
            if len(seen) >= cap:
                complete = False
                break
            if rule.heights[i] > room:
                continue  # the expander never takes this alternative this deep
            if isinstance(alt, str):
                seen[alt] = None
            else:
                values = lambda n: self.values(n, cap, depth + 1, memo)  # noqa: E731
                complete = expand_all(alt, {}, values, seen, cap) and complete
        memo[key] = (list(seen), complete)
        return memo[key]


def expand_all(parts: tuple, bound: dict, values: Callable, seen: dict, cap: int) -> bool:
    """Add every string `parts` can make to `seen` (dict as ordered set); False if capped.

    Bound references read `bound[name]`; fresh ones range over `values(name)`.
    """
    slots, complete = [], True
    for p in parts:
        if isinstance(p, str):
            slots.append((p,))
        elif not p[0] and p[1] in bound:
            slots.append((_apply(bound[p[1]], p[2]),))
        else:
            vals, done = values(p[1])
            complete = complete and done
            slots.append(tuple(_apply(v, p[2]) for v in vals))
    for budget, combo in enumerate(itertools.product(*slots)):
        if len(seen) >= cap or budget >= 4 * cap:
            return False
        seen["".join(combo)] = None
    return complete


def _apply(value: str, filters: tuple) -> str:
    for f in filters:
        value = f(value)
    return value


def _least_cost(rules: dict[str, Rule], combine: Callable[[list[float]], float]) -> dict:
    """Least cost to finish each symbol (Knuth's generalisation of Dijkstra); absent = never.

    An alternative's cost is known once all its references are final; `combine` is monotone and
    at least each input (1 + max, 1 + sum), which is what makes the greedy order correct.
    """
    users: dict[str, list[tuple[str, int]]] = {}
    waiting: dict[tuple[str, int], int] = {}
    heap: list[tuple[float, str]] = []
    for name, rule in rules.items():
        for i in range(len(rule.alts)):
            refs = set(rule.refs(i))
            waiting[name, i] = len(refs)
            for r in refs:
                users.setdefault(r, []).append((name, i))
            if not refs:
                heap.append((combine([]), name))
    heapq.heapify(heap)
    final: dict[str, float] = {}
    while heap:
        cost, name = heapq.heappop(heap)
        if name in final:
            continue
        final[name] = cost
        for user, i in users.get(name, ()):
            waiting[user, i] -= 1
            if waiting[user, i] == 0 and user not in final:
                cost = combine([final[r] for r in rules[user].refs(i)])
                heapq.heappush(heap, (cost, user))
    return final


class Draw:
    """Grammar state for one conversation: its shuffle bags, its random numbers, the work done.

    First draws (the first value of each symbol in a conversation) are decoded from one number
    `u` in [0, 1), like arithmetic coding: the alternative whose weight interval holds u, then u
    rescaled inside that interval for the next symbol. Feeding evenly spread u's (a low-discrepancy
    sequence) thus walks the combinations of values in proportion to their weights, where
    independent random draws would repeat some and miss others. Later draws (a refilled bag,
    `pick`) use an RNG seeded from `key`, made on demand: seeding costs more than a conversation.
    """

    __slots__ = ("rules", "key", "u", "scale", "bags", "work", "_rng")

    def __init__(self, grammar: Grammar, key: str, u: float | None = None):
        self.rules = grammar.rules
        self.key, self.u, self.scale = key, u, 1.0
        self.bags: dict[str, set[int]] = {}  # symbol -> alternatives used since the bag refilled
        self.work = 0
        self._rng: random.Random | None = None

    def rng(self) -> random.Random:
        """This conversation's RNG: random.Random(key), a pure function of seed and index."""
        if self._rng is None:
            self._rng = random.Random(self.key)
        return self._rng

    def expand(self, name: str, depth: int = 1) -> str:
        """A fresh value of `name`, honouring the bag, the depth limit and the work limit."""
        rule = self.rules[name]
        self.work += 1
        if self.work > bounds.MAX_GRAMMAR_WORK:
            raise GuppyError(
                f"{rule.where}: more than {bounds.MAX_GRAMMAR_WORK:,} expansions in "
                "one conversation. Make the grammar less recursive"
            )
        alts = rule.alts
        if len(alts) == 1:
            alt = alts[0]
        elif (
            self.u is not None and rule.name not in self.bags and depth + rule.deepest - 1 <= _DEPTH
        ):
            # The common case, inlined: a symbol's first draw in a conversation, decoded from u.
            cum = rule.cum
            x = self.u * cum[-1]
            i = bisect(cum, x)
            if i >= len(alts):
                i = len(alts) - 1
            weight = rule.weights[i]
            u = (x - (cum[i - 1] if i else 0.0)) / weight
            self.u = 0.0 if u < 0.0 else _BELOW_1 if u > _BELOW_1 else u
            self.scale *= weight / cum[-1]
            if self.scale < 1e-12:  # u's bits are spent: the rest is rounding noise
                self.u = None
            self.bags[rule.name] = {i}
            alt = alts[i]
        else:
            alt = alts[self._choose(rule, depth)]
        if alt.__class__ is str:
            return alt
        out = []
        for p in alt:
            if p.__class__ is str:
                out.append(p)
            else:
                value = self.expand(p[1], depth + 1)
                for f in p[2]:
                    value = f(value)
                out.append(value)
        text = "".join(out)
        if len(text) > bounds.MAX_MESSAGE_CHARS:
            raise GuppyError(
                f"{rule.where}: expands to more than {bounds.MAX_MESSAGE_CHARS:,} "
                "characters. Shorten the alternatives"
            )
        return text

    def _choose(self, rule: Rule, depth: int) -> int:
        n = len(rule.alts)
        free = depth + rule.deepest - 1 <= bounds.MAX_GRAMMAR_DEPTH  # no depth restriction
        bag = self.bags.get(rule.name)
        if bag is None:
            if free and self.u is not None:
                x = self.u * rule.cum[-1]
                i = min(bisect(rule.cum, x), n - 1)
                weight = rule.weights[i]
                self.u = min(max((x - (rule.cum[i - 1] if i else 0.0)) / weight, 0.0), _BELOW_1)
                self.scale *= weight / rule.cum[-1]
                if self.scale < 1e-12:  # u's bits are spent: the rest is rounding noise
                    self.u = None
                self.bags[rule.name] = {i}
                return i
            bag = self.bags[rule.name] = set()
        elif len(bag) >= n:
            bag.clear()
        random = self.rng().random
        if n > SMALL:
            return self._choose_big(rule, bag, free, depth, random)
        if free:
            # Rejection first: cheap while few alternatives are used, which is nearly always.
            for _ in range(4):
                i = min(bisect(rule.cum, random() * rule.cum[-1]), n - 1)
                if i not in bag:
                    bag.add(i)
                    return i
            ok = range(n)
        else:  # near the depth limit: only alternatives that can still finish in time
            room = bounds.MAX_GRAMMAR_DEPTH - depth + 1
            ok = [i for i in range(n) if rule.heights[i] <= room]
        fresh = [i for i in ok if i not in bag] or ok
        r = random() * sum(rule.weights[i] for i in fresh)
        for i in fresh:
            r -= rule.weights[i]
            if r < 0:
                break
        bag.add(i)
        return i

    def _choose_big(self, rule: Rule, bag: set[int], free: bool, depth: int, random) -> int:
        """_choose for a symbol of many alternatives, in O(log n) per draw: the exact "fresh
        alternatives only" draw costs O(n), which a 5,000-alternative symbol drawn hundreds of
        times per message turns into seconds. After a second draw that lands in the bag, a repeat
        is allowed: by then the bag holds most of the weight, and the weights ask for repeats."""
        if free:
            ok, cum = None, rule.cum
        else:  # near the depth limit: only alternatives that can still finish in time
            room = bounds.MAX_GRAMMAR_DEPTH - depth + 1
            if room not in rule.fitting:
                ok = [i for i in range(len(rule.alts)) if rule.heights[i] <= room]
                rule.fitting[room] = (ok, list(itertools.accumulate(rule.weights[i] for i in ok)))
            ok, cum = rule.fitting[room]
        for _ in range(2):
            j = min(bisect(cum, random() * cum[-1]), len(cum) - 1)
            i = j if ok is None else ok[j]
            if i not in bag:
                break
        bag.add(i)
        return i
