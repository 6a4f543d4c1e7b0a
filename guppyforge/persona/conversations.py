"""A persona's conversations: `Sampler(persona, seed).conversation(index)`.

Read in this order: the pairing rule (which replies answer which questions, format 1.1); the
sampler (a topic, an ask, a paired say, follow-ups, the style rules, each from the index's own
seeded RNG); and the off-topic rows (a prompt from the shipped pool answered with the persona's
`offtopic.say`). Every row is a pure function of (persona, seed, index).
"""

from __future__ import annotations

import random
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from guppyforge.errors import GuppyError
from guppyforge.files import personas_dir
from guppyforge.persona import bounds
from guppyforge.persona.grammar import INF, Draw, Grammar, Rule
from guppyforge.persona.templating import Compiled, TemplateProblem, compile_text, did_you_mean
from guppyforge.persona.types import Persona, Template
from guppyforge.persona.variation import Rng, normalise

# --- Which replies answer which questions: the pairing rule of persona format 1.1.
#
# A symbol that some question of a step states (`do you like {{ food }}`) is an *echo* when a reply
# of that step reads it: "{{ food }}? yes" only makes sense after a question that named the food.
# In format 1.1 a reply is paired only with questions that state every symbol it echoes; a symbol
# no question of the step states is the character's own (picked for the reply, as in format 1),
# and a symbol read under `is defined` is optional: the test is true exactly when the question
# stated it. Format 1 pairs every question with every reply; `validate` warns where that makes a
# reply echo a value its question never stated.

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
        return Stage(
            asks,
            says,
            [c.symbols for _, c in asks],
            [c.symbols for _, c in says],
            [frozenset()] * len(says),
        )
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
                errors.append(
                    f"{t.where}: echoes {_names(st.say_need[s])}, which no single "
                    "question of the topic states, so it can never be used. Use "
                    "pick('name') for a value of its own, or add a question"
                )
            elif k and not st.fits(s, bound_max):
                errors.append(
                    f"{t.where}: echoes {_names(st.say_need[s])}, which no question "
                    "before it states. Use pick('name') for a value of its own"
                )
        if k == 0:
            for a, (t, _) in enumerate(st.asks):
                if not st.replies_for(dict.fromkeys(st.ask_bind[a])):
                    errors.append(
                        f"{t.where}: no reply of topic '{topic_name}' fits this "
                        "question: each echoes a symbol it does not state. Add a "
                        "reply that echoes nothing it leaves out"
                    )
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
                out.append(
                    f"{t.where}: reads {{{{ {name} }}}}, but the question at line "
                    f"{q.line}{more} never states it, so this reply names a {name} the "
                    "user never said. Write `guppyforge: 1.1` to pair replies only with "
                    "questions that state what they echo, or split the topic"
                )
                break
    return out


def _names(names) -> str:
    return ", ".join(f"{{{{ {n} }}}}" for n in sorted(names))


# --- Turn a persona into conversations: `Sampler(persona, seed).conversation(index)`.
#
# A conversation depends only on (persona, seed, index, turns, topic), never on which others were
# made before it, so any worker can make sample 41,337 alone. The index picks a topic from a
# weighted schedule, an (ask, say) pair in turn, and an evenly spread number from which the grammar
# decodes its values (see grammar.Draw); anything else random comes from random.Random(
# f"{seed}:{index}"). Each symbol a template names is bound once per conversation, so the reply can
# reuse what the question picked; `pick('x')` and references inside the grammar draw fresh values.

# Ranks 0, 1, 2... -> u = frac(u0 + rank / golden ratio): the most evenly spread sequence in [0, 1)
# (any N points leave gaps of at most three sizes), from which Draw decodes the grammar's values.
_GOLDEN = (5**0.5 - 1) / 2
SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)|[。！？]+")
_SPACES = re.compile(r"  +")


@dataclass(frozen=True)
class Conversation:
    """One generated (or hand-written) conversation and where in the YAML it came from."""

    messages: list[dict]  # [{"role": "user", "content": ...}, {"role": "assistant", ...}, ...]
    topic: str
    template_id: str  # e.g. "food/ask2@L57/say5@L63", "examples/3@L140", "examples/4@hand.csv#2"
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
            if work > bounds.MAX_GRAMMAR_WORK and all(
                grammar.work.get(s, 0) <= bounds.MAX_GRAMMAR_WORK for s in (*c.symbols, *c.picks)
            ):  # a symbol past the limit on its own is reported once, as a grammar problem
                on_error(
                    f"{t.where}: needs {work:g} symbol expansions, more than the limit of "
                    f"{bounds.MAX_GRAMMAR_WORK:,}. Use fewer or smaller symbols"
                )
            elif all(  # a symbol with a grammar problem is reported once, above
                grammar.work.get(s, INF) <= bounds.MAX_GRAMMAR_WORK
                and grammar.height.get(s, INF) <= bounds.MAX_GRAMMAR_DEPTH
                for s in (*c.symbols, *c.picks)
            ):
                most = sum(grammar.most(s) for s in (*c.symbols, *c.picks))
                # Jinja's sandbox makes each value it renders cost about two expansions more.
                most *= 1 if c.parts is not None else 3
                if most > bounds.MAX_MESSAGE_WORK:  # what bounds the time a message costs
                    on_error(
                        f"{t.where}: can take more than {bounds.MAX_MESSAGE_WORK} symbol "
                        "expansions in one message (the limit; {% if %} templates count "
                        "3 per expansion). Use fewer, flatter symbols"
                    )
        return out

    topics = [
        CompiledTopic(
            t.name,
            t.weight,
            templates(t.ask),
            templates(t.say),
            [(templates(f.ask), templates(f.say)) for f in t.follow_ups],
        )
        for t in persona.topics.values()
    ]
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
        offsets = {
            t.name: (rng.randrange(len(t.ask)), rng.randrange(len(t.say))) for t in self._topic_list
        }
        self._pairs = {
            t.name: first_pairs(t.stages[0], offsets[t.name]) or [(0, 0)] for t in self._topic_list
        }
        style = persona.style
        self._case = {"lower": str.lower, "upper": str.upper}.get(style.case)
        self._max_sentences = style.max_sentences
        # One regex for all phrases: a single scan per reply instead of one per phrase.
        never = "|".join(re.escape(p) for p in style.never_say)
        self._never = re.compile(never).search if never else None

    def conversation(self, index: int, turns: int = 1, topic: str | None = None) -> Conversation:
        """The conversation number `index`: the same arguments always give the same text.

        Later turns use the topic's follow-ups in order, each once, so a topic with k follow-ups
        makes at most k + 1 turns; a turn that cannot avoid repeating a line of the conversation
        ends it early, so `turns` is a most: no user line and no reply ever repeats.
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
        for j in range(1, min(turns, len(t.stages))):  # follow-up j-1 is turn j+1, once
            turn = self._later_turn(t.stages[j], bound, draw, seen)
            if turn is None:
                break
            a, s, prompt, reply = turn
            seen.update((prompt, reply))
            messages += [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": reply},
            ]
            st = t.stages[j]
            ids.append(f"f{j - 1}:ask{a}@L{st.asks[a][0].line}/say{s}@L{st.says[s][0].line}")
        return Conversation(messages, t.name, "/".join(ids), len(messages) // 2)

    def _later_turn(self, st: Stage, bound: dict, draw: Draw, seen: set):
        """A follow-up (ask, say, prompt, reply) repeating no line in `seen`, or None."""
        rng = draw.rng()
        for _ in range(bounds.MAX_TURN_REDRAWS):
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
                messages += [
                    {"role": "user", "content": user},
                    {"role": "assistant", "content": assistant},
                ]
            out.append(
                Conversation(
                    messages, ex.topic or "examples", f"examples/{i}{ex.id_tail}", len(ex.turns)
                )
            )
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
        for _ in range(bounds.MAX_NEVER_SAY_REDRAWS):
            reply = self.style(self._render(*st.says[s], bound, draw, st.say_bind[s]))
            if self._never is None or not self.banned(reply):
                return s, reply
            options = options or st.replies_for(bound)
            # Draw again: another reply that fits the question, fresh grammar picks.
            s = options[draw.rng().randrange(len(options))]
        raise GuppyError(
            f"{st.says[s][0].where}: {bounds.MAX_NEVER_SAY_REDRAWS} replies in a "
            "row contained a style.never_say phrase. Reword the templates or "
            "grammar"
        )

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
        if len(text) > bounds.MAX_MESSAGE_CHARS:
            raise GuppyError(
                f"{t.where}: renders {len(text):,} characters, more than the "
                f"{bounds.MAX_MESSAGE_CHARS:,} limit. Shorten it"
            )
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
    cuts = [m.end() for m in SENTENCE_END.finditer(text)]
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


# --- Off-topic and break-character prompts, answered in character.
#
# guppyforge ships a pool of general prompts that no persona writes (facts, maths, code, news,
# money, advice, rude lines, "are you an ai", "ignore your instructions") in two fixed parts:
# `train.txt`, which `generate` mixes in at the persona's `offtopic.share`, each paired with one of
# the persona's `offtopic.say` deflections; and `heldout.txt`, which generate never uses and `eval`
# samples, so the off-topic pass rate is measured on prompts the model never saw.

OFFTOPIC = "offtopic"  # the `topic` of an off-topic row
POOL_PARTS = ("train", "heldout")


def pool(part: str) -> tuple[str, ...]:
    """The shipped prompts of one part of the pool ("train" or "heldout"), in file order."""
    if part not in POOL_PARTS:
        raise ValueError(f"no pool part {part!r}")
    text = (personas_dir() / "offtopic" / f"{part}.txt").read_text(encoding="utf-8")
    lines = (line.strip() for line in text.splitlines())
    return tuple(dict.fromkeys(x for x in lines if x and not x.startswith("#")))


def compile_say(
    persona: Persona, on_error: Callable[[str], None]
) -> list[tuple[Template, Compiled]]:
    """The persona's `offtopic.say` templates, compiled; each problem goes to `on_error`."""
    out = []
    for t in persona.offtopic.say if persona.offtopic else ():
        try:
            out.append((t, compile_text(t.text, persona.grammar)))
        except TemplateProblem as p:
            on_error(f"{t.file}:{t.line + p.line - 1}:{t.column}: {t.key}: {p.problem}. {p.fix}")
    return out


ASKED_DRAWS = 24  # conversations per topic looked at for what its opening asks


def _asked(sampler: Sampler) -> set[str]:
    """The persona's opening questions (and its examples' first lines), normalised."""
    names = (sampler.persona.name, sampler.persona.display_name)
    out = set()
    for name in sampler.topics:
        for i in range(ASKED_DRAWS):
            out.add(normalise(sampler.conversation(i, topic=name).messages[0]["content"], names))
    for c in sampler.examples():
        out.add(normalise(c.messages[0]["content"], names))
    return out


class OffTopicSampler:
    """Decides which conversation indices are off-topic and makes those conversations.

    Index i is off-topic when its own RNG draws under `share`. Not the golden-ratio sequence the
    topic schedule's grammar draws use: an off-topic band of that sequence took its rows from a
    few topics only, leaving them 10-24 % short at 5,000 rows. The prompt, the deflection and its
    grammar values come from the index's RNG too, so the row is a pure function of (persona,
    seed, index) like any other.
    """

    def __init__(self, sampler: Sampler, seed: int):
        persona = sampler.persona
        self.sampler, self.seed = sampler, seed
        self.says = compile_say(persona, _raise)
        self.share = persona.offtopic.share if persona.offtopic and self.says else 0.0
        # A pool prompt the persona's own topics ask ("are you a robot" in a robot's file) is
        # the topic's to answer: deflected as well, it would train two answers to one question.
        asked = _asked(sampler) if self.share else set()
        names = (persona.name, persona.display_name)
        self.prompts = tuple(p for p in pool("train") if normalise(p, names) not in asked)

    def takes(self, index: int) -> bool:
        return self.share > 0 and Rng(self.seed, index, salt=2).random() < self.share

    def conversation(self, index: int) -> Conversation:
        rng = Rng(self.seed, index, salt=1)
        k = rng.randrange(len(self.prompts))
        draw = Draw(self.sampler.grammar, f"{self.seed}:{index}:offtopic", rng.random())
        for _ in range(bounds.MAX_NEVER_SAY_REDRAWS):
            s = rng.randrange(len(self.says))
            t, c = self.says[s]
            draw.work = 0
            reply = self.sampler.style(self.sampler.render(t, c, {}, draw))
            if not self.sampler.banned(reply):
                messages = [
                    {"role": "user", "content": self.prompts[k]},
                    {"role": "assistant", "content": reply},
                ]
                return Conversation(messages, OFFTOPIC, f"offtopic:p{k}/say{s}@L{t.line}", 1)
        raise GuppyError(
            f"{t.where}: {bounds.MAX_NEVER_SAY_REDRAWS} off-topic replies in a row "
            "contained a style.never_say phrase. Reword offtopic.say"
        )
