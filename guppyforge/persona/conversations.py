"""Turn a persona into conversations: `Sampler(persona, seed).conversation(index)`.

A conversation depends only on (persona, seed, index, turns, topic), never on which others were
made before it, so any worker can make sample 41,337 alone. The index picks a topic from a
weighted schedule, an (ask, say) pair in turn, and an evenly spread number from which the grammar
decodes its values (see grammar.Draw); anything else random comes from random.Random(
f"{seed}:{index}"). Each symbol a template names is bound once per conversation, so the reply can
reuse what the question picked; `pick('x')` and references inside the grammar draw fresh values.
"""

from __future__ import annotations

import random
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from guppyforge.errors import GuppyError
from guppyforge.persona import limits
from guppyforge.persona.grammar import INF, Draw, Grammar, Rule
from guppyforge.persona.pairing import Stage, first_pairs, make_stage, stated
from guppyforge.persona.templating import Compiled, TemplateProblem, compile_text, did_you_mean
from guppyforge.persona.types import Persona, Template

# Ranks 0, 1, 2... -> u = frac(u0 + rank / golden ratio): the most evenly spread sequence in [0, 1)
# (any N points leave gaps of at most three sizes), from which Draw decodes the grammar's values.
_GOLDEN = (5**0.5 - 1) / 2
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)|[。！？]+")
_SPACES = re.compile(r"  +")


@dataclass(frozen=True)
class Conversation:
    """One generated (or hand-written) conversation and where in the YAML it came from."""

    messages: list[dict]  # [{"role": "user", "content": ...}, {"role": "assistant", ...}, ...]
    topic: str
    template_id: str  # e.g. "food/ask2@L57/say5@L63", "examples/3@L140"
    turns: int


@dataclass
class CompiledTopic:
    name: str
    weight: float
    ask: list[tuple[Template, Compiled]]
    say: list[tuple[Template, Compiled]]
    follow_ups: list[tuple[list, list]]  # per follow-up: (ask, say) like the two above
    stages: list[Stage] = field(default_factory=list)  # [first step, *follow-ups], paired


@dataclass
class CompiledPersona:
    grammar: Grammar
    topics: list[CompiledTopic]
    used_symbols: set[str]


def compile_persona(persona: Persona, on_error: Callable[[str], None]) -> CompiledPersona:
    """Parse every grammar alternative and template once; report each problem to `on_error`."""
    used: set[str] = set()
    rules = {}
    for name, sym in persona.grammar.items():
        alts = []
        for alt in sym.alternatives:
            c = _compile(alt, persona, on_error, grammar=True)
            used.update(c.picks)
            alts.append(
                c.parts[0] if len(c.parts) == 1 and isinstance(c.parts[0], str) else c.parts
            )
        rules[name] = Rule(name, alts, [a.weight for a in sym.alternatives], sym.where)
    grammar = Grammar(rules)
    for where, problem, fix in grammar.problems():
        on_error(f"{where}: {problem}. {fix}")

    def templates(items) -> list[tuple[Template, Compiled]]:
        out = [(t, _compile(t, persona, on_error)) for t in items]
        for t, c in out:
            used.update(c.symbols, c.picks)
            work = sum(grammar.work.get(s, 0) for s in (*c.symbols, *c.picks))
            if work > limits.MAX_GRAMMAR_WORK and all(
                grammar.work.get(s, 0) <= limits.MAX_GRAMMAR_WORK for s in (*c.symbols, *c.picks)
            ):  # a symbol past the limit on its own is reported once, as a grammar problem
                on_error(f"{t.where}: needs {work:g} symbol expansions, more than the limit of "
                         f"{limits.MAX_GRAMMAR_WORK:,}. Use fewer or smaller symbols")  # fmt: skip
            elif all(  # a symbol with a grammar problem is reported once, above
                grammar.work.get(s, INF) <= limits.MAX_GRAMMAR_WORK
                and grammar.height.get(s, INF) <= limits.MAX_GRAMMAR_DEPTH
                for s in (*c.symbols, *c.picks)
            ):
                most = sum(grammar.most(s) for s in (*c.symbols, *c.picks))
                # Jinja's sandbox makes each value it renders cost about two expansions more.
                most *= 1 if c.parts is not None else 3
                if most > limits.MAX_MESSAGE_WORK:  # what bounds the time a message costs
                    on_error(f"{t.where}: can take more than {limits.MAX_MESSAGE_WORK} symbol "
                             "expansions in one message (the limit; {% if %} templates count "
                             "3 per expansion). Use fewer, flatter symbols")  # fmt: skip
        return out

    topics = [
        CompiledTopic(t.name, t.weight, templates(t.ask), templates(t.say),
                      [(templates(f.ask), templates(f.say)) for f in t.follow_ups])
        for t in persona.topics.values()
    ]  # fmt: skip
    strict = persona.spec >= (1, 1)
    for t in topics:
        first = make_stage(t.ask, t.say, set(), strict)
        asked = set().union(*(stated(c) for _, c in t.ask))
        t.stages = [first] + [make_stage(a, s, asked, strict) for a, s in t.follow_ups]
    return CompiledPersona(grammar, topics, used)


# id(persona) -> its templates as load_persona compiled them while checking the file; an entry
# lives as long as its persona (weakref.finalize), so an id is never reused for another one.
_COMPILED: dict[int, CompiledPersona] = {}


def remember_compiled(persona: Persona, compiled: CompiledPersona) -> None:
    """Keep a clean persona's compiled templates for the Samplers made from it."""
    _COMPILED[id(persona)] = compiled
    weakref.finalize(persona, _COMPILED.pop, id(persona), None)


def _compile(t: Template, persona: Persona, on_error, grammar: bool = False) -> Compiled:
    try:
        return compile_text(t.text, persona.grammar, grammar=grammar)
    except TemplateProblem as p:
        line = t.line + p.line - 1
        on_error(f"{t.file}:{line}:{t.column}: {t.key}: {p.problem}. {p.fix}")
        return Compiled(t.text, (), None, (), ())


def _raise(message: str) -> None:
    raise GuppyError(message)


class Sampler:
    """Makes conversations from a persona; everything is compiled once, here."""

    def __init__(self, persona: Persona, seed: int = 0):
        self.persona, self.seed = persona, seed
        self.compiled = _COMPILED.get(id(persona)) or compile_persona(persona, _raise)
        self.grammar = self.compiled.grammar
        self.topics = {t.name: t for t in self.compiled.topics}
        self._topic_list = self.compiled.topics
        rng = random.Random(f"{seed}:schedule")
        self._quota, self._slots = _schedule([t.weight for t in self._topic_list], rng)
        self._shift, self._u0 = rng.randrange(len(self._slots)), rng.random()
        offsets = {t.name: (rng.randrange(len(t.ask)), rng.randrange(len(t.say)))
                   for t in self._topic_list}  # fmt: skip
        self._pairs = {t.name: first_pairs(t.stages[0], offsets[t.name]) or [(0, 0)]
                       for t in self._topic_list}  # fmt: skip
        style = persona.style
        self._case = {"lower": str.lower, "upper": str.upper}.get(style.case)
        self._max_sentences = style.max_sentences
        # One regex for all phrases: a single scan per reply instead of one per phrase.
        never = "|".join(re.escape(p) for p in style.never_say)
        self._never = re.compile(never).search if never else None

    def conversation(self, index: int, turns: int = 1, topic: str | None = None) -> Conversation:
        """The conversation number `index`: the same arguments always give the same text.

        Later turns use the topic's follow-ups in order; a turn that cannot avoid repeating a
        line of the conversation (or a topic without follow-ups) ends it early, so `turns` is
        a most: no user line and no reply ever repeats within one conversation.
        """
        if topic is None:  # slot in the weighted schedule -> topic, and its rank in that topic
            cycle, slot = divmod(index + self._shift, len(self._slots))
            i, k = self._slots[slot]
            t, rank = self._topic_list[i], cycle * self._quota[i] + k
        elif topic in self.topics:
            t, rank = self.topics[topic], index
        else:
            hint = did_you_mean(topic, self.topics) or f"Use one of: {', '.join(self.topics)}"
            raise GuppyError(f"{self.persona.path}: topics: no topic '{topic}'. {hint}")
        # Rank -> (ask, say) cell, visiting every pair that answers in turn; the rank also drives
        # the grammar's quasi-random first draws, so conversations of one cell differ.
        pairs = self._pairs[t.name]
        a, s = pairs[rank % len(pairs)]
        # The topic rank, not the rank within the cell, drives u: cells that share an ask
        # template must not replay the same sequence of values, or prompts would repeat.
        draw = Draw(self.grammar, f"{self.seed}:{index}", (self._u0 + rank * _GOLDEN) % 1.0)
        bound: dict[str, str] = {}
        first = t.stages[0]
        prompt = self._render(*first.asks[a], bound, draw, first.ask_bind[a])
        s, reply = self._reply(first, s, bound, draw)
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
        ids = [t.name, f"ask{a}@L{first.asks[a][0].line}/say{s}@L{first.says[s][0].line}"]
        seen = {prompt, reply}
        for k in range(1, turns if len(t.stages) > 1 else 1):
            j = 1 + (k - 1) % (len(t.stages) - 1)
            turn = self._later_turn(t.stages[j], bound, draw, seen)
            if turn is None:
                break
            a, s, prompt, reply = turn
            seen.update((prompt, reply))
            messages += [{"role": "user", "content": prompt},
                         {"role": "assistant", "content": reply}]  # fmt: skip
            st = t.stages[j]
            ids.append(f"f{j - 1}:ask{a}@L{st.asks[a][0].line}/say{s}@L{st.says[s][0].line}")
        return Conversation(messages, t.name, "/".join(ids), len(messages) // 2)

    def _later_turn(self, st: Stage, bound: dict, draw: Draw, seen: set):
        """A follow-up (ask, say, prompt, reply) repeating no line in `seen`, or None."""
        rng = draw.rng()
        for _ in range(limits.MAX_TURN_REDRAWS):
            draw.work = 0  # the work limit holds per message rendered, redraws included
            trial = dict(bound)  # a refused draw must not leave its values bound
            a = rng.randrange(len(st.asks))
            prompt = self._render(*st.asks[a], trial, draw, st.ask_bind[a])
            options = st.replies_for(trial)
            if prompt in seen or not options:
                continue
            s, reply = self._reply(st, options[rng.randrange(len(options))], trial, draw)
            if reply not in seen:
                bound.update(trial)
                return a, s, prompt, reply
        return None

    def examples(self) -> list[Conversation]:
        """The persona's hand-written example conversations, as they are written."""
        out = []
        for i, ex in enumerate(self.persona.examples):
            messages = []
            for user, assistant in ex.turns:
                messages += [{"role": "user", "content": user},
                             {"role": "assistant", "content": assistant}]  # fmt: skip
            out.append(Conversation(messages, ex.topic or "examples", f"examples/{i}@L{ex.line}",
                                    len(ex.turns)))  # fmt: skip
        return out

    def style(self, text: str) -> str:
        """Apply the persona's style rules (case, sentence cap) to one reply."""
        if self._case is not None:
            text = self._case(text)
        limit = self._max_sentences
        if limit and (
            text.count(".") + text.count("!") + text.count("?") > limit or not text.isascii()
        ):
            text = keep_sentences(text, limit)
        return text

    def banned(self, reply: str) -> bool:
        """True when a styled reply contains a style.never_say phrase (in any case)."""
        low = reply if self._case is str.lower else reply.lower()
        return self._never is not None and self._never(low) is not None

    def _reply(self, st: Stage, s: int, bound: dict, draw: Draw):
        options = None
        for _ in range(limits.MAX_NEVER_SAY_REDRAWS):
            reply = self.style(self._render(*st.says[s], bound, draw, st.say_bind[s]))
            if self._never is None or not self.banned(reply):
                return s, reply
            options = options or st.replies_for(bound)
            # Draw again: another reply that fits the question, fresh grammar picks.
            s = options[draw.rng().randrange(len(options))]
        raise GuppyError(f"{st.says[s][0].where}: {limits.MAX_NEVER_SAY_REDRAWS} replies in a "
                         "row contained a style.never_say phrase. Reword the templates or "
                         "grammar")  # fmt: skip

    def render(self, t: Template, c: Compiled, bound: dict, draw: Draw) -> str:
        """Render one compiled template with this persona's grammar (off-topic replies use it)."""
        return self._render(t, c, bound, draw)

    def _render(self, t: Template, c: Compiled, bound: dict, draw: Draw, bind=None) -> str:
        """Render one template; `bind`: the symbols it may bind (default: all it reads)."""
        for name in c.symbols if bind is None else bind:
            if name not in bound:
                bound[name] = draw.expand(name)
        if c.parts is not None:
            out = []
            for p in c.parts:
                if p.__class__ is str:
                    out.append(p)
                    continue
                value = draw.expand(p[1]) if p[0] else bound[p[1]]
                for f in p[2]:
                    value = f(value)
                out.append(value)
            text = "".join(out)
        else:
            try:
                text = c.jinja.render({**bound, "pick": draw.expand})
            except GuppyError:
                raise
            except Exception as exc:  # StrictUndefined, sandbox refusals: the template's fault
                problem = (str(exc).splitlines() or ["render failed"])[0].rstrip(".")
                raise GuppyError(f"{t.where}: {problem}. Fix the template") from None
        text = tidy(text)
        if len(text) > limits.MAX_MESSAGE_CHARS:
            raise GuppyError(f"{t.where}: renders {len(text):,} characters, more than the "
                             f"{limits.MAX_MESSAGE_CHARS:,} limit. Shorten it")  # fmt: skip
        return text


def _schedule(weights: list[float], rng: random.Random, size: int = 10_000):
    """A period of `size` slots shared out by weight: (quota per topic, [(topic, k)] per slot).

    Slot j of conversation index i is (i + shift) mod size; the k-th slot of topic t in cycle c
    is that topic's conversation number c * quota[t] + k: an exact rank, with no counting.
    """
    total = sum(weights)
    exact = [max(w / total * size, 1.0) for w in weights]
    quota = [int(q) for q in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: quota[i] - exact[i])
    for i in by_remainder[: max(0, size - sum(quota))]:
        quota[i] += 1  # largest remainders first, so quotas sum to about `size`
    ties = [rng.random() for _ in weights]
    # Spread each topic's slots evenly over the period rather than in blocks.
    slots = sorted(((k + ties[i]) / q, i, k) for i, q in enumerate(quota) for k in range(q))
    return quota, [(i, k) for _, i, k in slots]


def keep_sentences(text: str, limit: int) -> str:
    """The `limit` sentences of `text` with the most words (ties: the earlier), in their order.

    A reply over the cap loses its fillers ("sorry.", "beep.") rather than its main clause.
    """
    cuts = [m.end() for m in _SENTENCE_END.finditer(text)]
    if cuts and cuts[-1] < len(text.rstrip()):
        cuts.append(len(text))  # an unfinished last sentence counts too
    pieces = [text[a:b] for a, b in zip([0, *cuts], cuts, strict=False)]
    if len(pieces) <= limit:
        return text
    longest = sorted(range(len(pieces)), key=lambda i: (-len(pieces[i].split()), i))[:limit]
    return "".join(pieces[i] for i in sorted(longest)).strip()


def tidy(text: str) -> str:
    """Collapse the double spaces an empty alternative or a skipped {% if %} leaves; strip."""
    if "  " in text:
        text = _SPACES.sub(" ", text)
    return text.strip()
