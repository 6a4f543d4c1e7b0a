"""What a persona can make, and what `generate -n N` will do with it, known before drawing.

Read in this order: capacity, the number of distinct conversations per topic counted by
enumeration (never guessed); then the forecast built on it: the unique share N draws will have,
rows per topic, and the (ask, say) pairs that run dry.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from guppyforge.persona.conversations import CompiledTopic, Sampler, first_pairs, tidy
from guppyforge.persona.grammar import expand_all
from guppyforge.persona.templating import Compiled
from guppyforge.persona.types import Persona, Template

# --- How many distinct conversations a persona can make: counted by enumeration, never guessed.
#
# For each topic: distinct prompts (user side), distinct replies (after style rules, never_say
# removed), and distinct single-turn (prompt, reply) pairs. Symbols a question and its answer share
# are bound once per conversation, so "worms? yes" only pairs with "do you like worms": pairs are
# counted per value of the shared symbols. Enumeration stops at caps; a count that hit a cap is a
# lower bound (`exact=False`). Counts treat draws as independent: the shuffle bag, which avoids
# repeating an alternative inside one conversation, can make a few counted pairs unreachable.

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


# --- What `generate -n N` will do with a persona, predicted before drawing: unique share, rows per
#
# topic, and the (ask, say) pairs that run dry.
#
# Generation walks a fixed schedule (see conversations.Sampler): each index picks a topic by weight,
# then the topic's (ask, say) pairs in turn, and drawing goes on until N rows are new. So each pair
# receives a known share of the draws, and can make only so many distinct conversations: a pair of
# fixed texts ("bye" x "farewell.") makes one, however heavy its topic's weight. Here each pair's
# distinct first turns are counted by enumeration (capacity._Counter), each follow-up step's
# distinct (question, reply) pairs likewise, and the draws it will get are held against them.
#
# The model of repeats: first turns are decoded from an evenly spread sequence, so a pair's first
# D draws over C distinct conversations give about min(D, C) new ones (fewer where alternatives are
# weighted unevenly); follow-ups are drawn at random, so conversations with more turns repeat as
# independent draws do, C (1 - e^(-D/C)). Text shared by two pairs and follow-ups ending early are
# left out: both are rare in a file that validates cleanly.

PAIR_CAP = 5_000  # distinct texts enumerated per template side of a pair: enough to see dryness
TEXT_CAP = 20_000  # weighted texts listed per pair: more than a pair that can run dry has
DRY_SHARE = 0.10  # a pair whose draws are more than this share repeats runs dry


@dataclass(frozen=True)
class PairForecast:
    """One (ask, say) pair of a topic's first step: its conversations and its draws for -n."""

    topic: str
    ask: Template
    say: Template
    conversations: int  # distinct first turns it can make (a floor when it hit a cap)
    draws: float  # draws the schedule asks of it for -n
    unique: float  # of which new, as predicted

    @property
    def dry(self) -> bool:
        return self.draws >= 2 and self.draws - self.unique > DRY_SHARE * self.draws

    def warning(self, n: int) -> str:
        repeats = 100 * (1 - self.unique / self.draws)
        return (
            f"{self.ask.where}: with {self.say.key} (line {self.say.line}) makes only "
            f"{self.conversations:,} distinct conversation{'s' * (self.conversations != 1)}, but "
            f"-n {n:,} draws this pair about {self.draws:,.0f} times ({repeats:.0f} % repeats). "
            "Add a symbol to the question or the reply, merge fixed texts into one template with "
            f"a symbol, or lower topics.{self.topic}.weight"
        )


FIXED_FOLLOW_UP_ROWS = 250  # rows one follow-up reply of fixed words may end before it is warned


def fixed_follow_up_warnings(forecast: Forecast) -> list[str]:
    """A follow-up reply with no symbol that about so many rows end with: the same words, word
    for word, hundreds of times teach the model that line by heart (a first turn's pairs are
    checked by `dry_warnings`)."""
    return [
        f"{t.where}: a follow-up reply with no symbol: about {rows:,.0f} rows of -n "
        f"{forecast.n:,} end with these same words. Add a symbol (an opener, a value), or more "
        "replies to this follow-up"
        for t, rows in forecast.fixed_follow_ups
        if rows > FIXED_FOLLOW_UP_ROWS
    ]


def dry_warnings(pairs: list[PairForecast], n: int) -> list[str]:
    """One warning per reply whose pairs run dry (each reply's asks together): a fix to a reply
    is one line of the file, however many asks it pairs with."""
    by_say: dict[tuple[str, int], list[PairForecast]] = {}
    for p in pairs:
        if p.dry:
            by_say.setdefault((p.topic, p.say.key), []).append(p)
    out = []
    for group in by_say.values():
        if len(group) == 1:
            out.append(group[0].warning(n))
            continue
        say, asks = group[0].say, ", ".join(p.ask.key.rpartition(".")[2] for p in group)
        fewest = min(group, key=lambda p: p.conversations)
        repeats = 100 * (1 - sum(p.unique for p in group) / sum(p.draws for p in group))
        out.append(
            f"{say.where}: with {len(group)} asks of topics.{group[0].topic} ({asks}) makes too "
            f"few distinct conversations for -n {n:,} (as few as {fewest.conversations:,}; "
            f"{repeats:.0f} % repeats). Add a symbol to this reply or to the asks, or lower "
            f"topics.{group[0].topic}.weight"
        )
    return out


@dataclass(frozen=True)
class Forecast:
    """The prediction for one -n: draws, unique share, rows per topic, every pair's figures."""

    n: int
    drawn: int
    unique_pct: float
    rows: dict[str, int]  # topic -> rows predicted
    pairs: list[PairForecast]
    capacity_spent: bool  # the persona cannot fill -n: generation stops at its draw limit
    examples: int = 0  # hand-written examples, kept as they are beside the drawn rows
    fixed_follow_ups: list = field(default_factory=list)  # (reply with no symbol, rows it ends)
    turns: dict[int, float] = field(default_factory=dict)  # turns -> share of rows, as drawn
    asked: dict[int, float] = field(default_factory=dict)  # turns -> share the mix asked for

    def turn_line(self) -> str | None:
        """How many turns the rows will have against what the mix asks, when they differ."""
        if set(self.asked) <= {1}:
            return None
        made = ", ".join(f"{k}: {v:.0%}" for k, v in sorted(self.turns.items()))
        asked = ", ".join(f"{k}: {v:.0%}" for k, v in sorted(self.asked.items()))
        if made == asked:
            return f"turns per row: {made}, as asked"
        return (
            f"turns per row: {made} (asked {asked}): a topic with k follow-ups makes at most "
            "k + 1 turns, so add follow-ups where you want longer conversations"
        )


def forecast(persona: Persona, n: int, mix=None, sampler: Sampler | None = None) -> Forecast:
    """Predict `generate -n n` (turn mix `mix`, default the persona's own) for a persona."""
    sampler = sampler or Sampler(persona)
    mix = mix or persona.turns or ((1, 1.0),)
    total_w = sum(w for _, w in mix)
    counter = _Counter(sampler)
    share = _topic_shares(sampler)
    need = max(0, n - len(persona.examples))
    limit = max(4 * n, n + 10_000)  # the draw limit of dataset.draw._Collector
    pools = []  # (topic, pair, share of all draws, weighted texts or count, share single-turn)
    turn_mix: dict[int, float] = {}  # turns -> share of the rows drawn (repeats ending early aside)
    fixed: list[tuple[Template, float]] = []  # follow-up replies with no symbol, and their rows
    pair_list: list[tuple[str, Template, Template, int, float]] = []
    for t in sampler.compiled.topics:
        first = t.stages[0]
        cells = first_pairs(first, (0, 0)) or [(0, 0)]
        later = [_stage_count(counter, st) for st in t.stages[1:]]
        per = share[t.name] / len(cells)
        enough = math.ceil(limit * per) + 1
        single = sum(w for k, w in mix if k == 1 or not later) / total_w
        for a, s in cells:
            c = _pair_count(counter, first, a, s, enough)
            pair_list.append((t.name, first.asks[a][0], first.says[s][0], c, per))
            i = len(pair_list) - 1
            texts = _texts(sampler, first, a, s) if c < enough else None
            pools.append((t.name, i, per, texts or c, single))
            for turns, w in mix:
                if turns > 1 and later:  # follow-ups are drawn at random: birthday repeats
                    size = c * math.prod(later[: turns - 1])  # each follow-up once, in order
                    pools.append((t.name, i, per * w / total_w, size, None))
        for turns, w in mix:  # a topic makes at most 1 + its follow-ups' turns
            made = 1 + min(turns - 1, len(later))
            turn_mix[made] = turn_mix.get(made, 0.0) + share[t.name] * w / total_w
        for j, st in enumerate(t.stages[1:]):  # follow-up j is turn j + 2 of its rows
            reach = sum(w for turns, w in mix if turns >= j + 2) / total_w
            for template, c in st.says:
                if not c.symbols and not c.picks:  # the same words in every row it ends
                    fixed.append((template, n * share[t.name] * reach / len(st.says)))

    def unique(drawn: float) -> float:
        return sum(_distinct(drawn * p, texts, single) for _, _, p, texts, single in pools)

    most = unique(limit)
    spent = most < need
    if spent:  # generation stops after a long run of repeats (dataset.draw._Collector) or at limit
        low, high = 0.0, float(limit)
        for _ in range(60):
            mid = (low + high) / 2
            low, high = (mid, high) if unique(mid) < most - 0.5 else (low, mid)
        drawn = min(float(limit), high + max(1_000, n // 10))
    else:  # unique() grows with the draws: bisect for the draws that give `need` new rows
        low, high = float(need), float(limit)
        for _ in range(60):
            mid = (low + high) / 2
            low, high = (mid, high) if unique(mid) < need else (low, mid)
        drawn = high
    rows: dict[str, float] = {t.name: 0.0 for t in sampler.compiled.topics}
    per_pair = [0.0] * len(pair_list)
    for name, i, p, texts, single in pools:
        got = _distinct(drawn * p, texts, single)
        rows[name] += got
        per_pair[i] += got
    pairs = [
        PairForecast(name, ask, say, c, drawn * per, per_pair[i])
        for i, (name, ask, say, c, per) in enumerate(pair_list)
    ]
    made = sum(rows.values())
    return Forecast(
        n=n,
        drawn=round(drawn),
        unique_pct=round(100 * made / drawn, 2) if drawn else 100.0,
        rows={k: round(v) for k, v in rows.items()},
        pairs=pairs,
        capacity_spent=spent,
        examples=len(persona.examples),
        fixed_follow_ups=fixed,
        turns=turn_mix,
        asked={k: w / total_w for k, w in mix},
    )


def _distinct(draws: float, texts, single: float | None) -> float:
    """New conversations expected from `draws` over `texts` (their probabilities, or a count of
    equally likely ones). `single`: share of the draws that stay one turn, on the evenly spread
    walk (a text of probability q gets draws * q of its points, each kept with that share);
    None: independent random draws."""
    if draws <= 0 or not texts:
        return 0.0
    if isinstance(texts, int):  # equally likely
        return texts * _hit(draws / texts, single)
    return sum(_hit(draws * q, single) for q in texts)


def _hit(m: float, single: float | None) -> float:
    """The chance that a text expecting `m` draws is made at least once."""
    if single is None:
        return -math.expm1(-m)
    return m * single if m < 1 else 1 - (1 - single) ** m


def _texts(sampler: Sampler, stage, a: int, s: int) -> list[float] | None:
    """Probabilities of the distinct (prompt, reply) texts of one pair, from the grammar's
    weights; None when it has Jinja logic or too many combinations to list."""
    ask_c, say_c = stage.asks[a][1], stage.says[s][1]
    if ask_c.parts is None or say_c.parts is None:
        return None
    names = list(dict.fromkeys((*ask_c.symbols, *say_c.symbols)))
    memo: dict = {}
    dists = [_dist(sampler.grammar, n, memo, 0) for n in names]
    fresh = [p for c in (ask_c, say_c) for p in c.parts if not isinstance(p, str) and p[0]]
    fresh_dists = [_dist(sampler.grammar, p[1], memo, 0) for p in fresh]
    if any(d is None for d in (*dists, *fresh_dists)):
        return None
    if math.prod(len(d) for d in (*dists, *fresh_dists)) > TEXT_CAP:
        return None
    out: dict[tuple[str, str], float] = {}
    for combo in itertools.product(*(d.items() for d in dists)):
        bound = {n: v for n, (v, _) in zip(names, combo, strict=True)}
        q = math.prod(p for _, p in combo)
        for picks in itertools.product(*(d.items() for d in fresh_dists)):
            it = iter(picks)
            texts = [_fill(c.parts, bound, it) for c in (ask_c, say_c)]
            key = (tidy(texts[0]), sampler.style(tidy(texts[1])))
            out[key] = out.get(key, 0.0) + q * math.prod(p for _, p in picks)
    return list(out.values())


def _fill(parts, bound: dict, picks, fresh: bool = False) -> str:
    text = []
    for p in parts:
        if isinstance(p, str):
            text.append(p)
            continue
        value = next(picks)[0] if p[0] or fresh else bound[p[1]]
        for f in p[2]:
            value = f(value)
        text.append(value)
    return "".join(text)


def _dist(grammar, name: str, memo: dict, depth: int) -> dict[str, float] | None:
    """A symbol's values with their probabilities (weights, shared out through references);
    None when there are more than TEXT_CAP or the symbol nests deeper than is worth listing."""
    if name in memo:
        return memo[name]
    if depth > 6:
        return None
    memo[name] = None  # a reference back to `name` while listing it: give up on it
    rule = grammar.rules[name]
    total = sum(rule.weights)
    out: dict[str, float] = {}
    for alt, w in zip(rule.alts, rule.weights, strict=True):
        if isinstance(alt, str):
            out[alt] = out.get(alt, 0.0) + w / total
            continue
        refs = [p for p in alt if not isinstance(p, str)]
        subs = [_dist(grammar, p[1], memo, depth + 1) for p in refs]
        if any(d is None for d in subs) or math.prod(len(d) for d in subs) > TEXT_CAP:
            return None
        for combo in itertools.product(*(d.items() for d in subs)):
            it = iter(combo)
            text = _fill(alt, {}, it, fresh=True)
            q = w / total * math.prod(p for _, p in combo)
            out[text] = out.get(text, 0.0) + q
        if len(out) > TEXT_CAP:
            return None
    memo[name] = out
    return out


def _topic_shares(sampler: Sampler) -> dict[str, float]:
    """Each topic's share of the draws: its slots in the schedule's period."""
    quota = sampler._quota
    total = sum(quota)
    return {t.name: q / total for t, q in zip(sampler.compiled.topics, quota, strict=True)}


def _sides(counter: _Counter, c, fixed: dict, reply: bool, cap: int) -> int:
    key = ("side", id(c), tuple(sorted(fixed.items())), reply)
    if key not in counter.memo:
        counter.budget = counter.share = cap
        counter.memo[key] = len(counter.outputs(c, fixed, reply=reply))
    return counter.memo[key]


def _pair_count(counter: _Counter, stage, a: int, s: int, enough: int) -> int:
    """Distinct (prompt, reply) first turns of one pair, per value of the symbols they share;
    counting stops past `enough` (more than the pair can ever be drawn)."""
    ask_c, say_c = stage.asks[a][1], stage.says[s][1]
    shared = [x for x in stage.ask_bind[a] if x in say_c.symbols]
    cap = min(PAIR_CAP, enough)
    total = 0
    for fixed in counter._assignments(shared):
        prompts = _sides(counter, ask_c, fixed, False, cap)
        if prompts:
            total += prompts * _sides(counter, say_c, fixed, True, cap)
        if total >= enough:
            break
    return total


def _stage_count(counter: _Counter, stage) -> int:
    """Distinct (question, reply) pairs of one follow-up step, values left free."""
    prompts: set[str] = set()
    for _, c in stage.asks:
        counter.budget = counter.share = PAIR_CAP
        prompts.update(counter.outputs(c, {}, reply=False))
    replies: set[str] = set()
    for _, c in stage.says:
        counter.budget = counter.share = PAIR_CAP
        replies.update(counter.outputs(c, {}, reply=True))
    return max(1, len(prompts)) * max(1, len(replies))
