"""What `validate` checks by making text, and the lints it warns with.

Checks render sample conversations and hold them to the sentence cap and the placeholders rule;
lints look at what a reply answers and name the lines involved. Both only report: nothing here
changes a persona.
"""

from __future__ import annotations

import re

from guppyforge.errors import GuppyError
from guppyforge.persona.conversations import SENTENCE_END, Sampler, first_pairs, stated, tidy
from guppyforge.persona.conversations import check as check_pairing
from guppyforge.persona.grammar import Draw
from guppyforge.persona.types import Persona

# --- What `validate` checks by making text: sample conversations, the sentence cap, placeholders.
#
# The schema (schema.py) and the compiler (conversations.compile_persona) catch what the file says;
# these checks catch what only rendering shows, each reported with the line of its template.

# Text the starter persona (templates/persona.yaml.j2) marks for the author to replace.
PLACEHOLDER = "TODO:"
_NOWHERE = None  # _render only names its template when it fails, which validate caught already
_SAMPLES = 12  # renders per reply template when its sentences cannot be counted from the text


def smoke_test(persona: Persona, tries: int = 3) -> list[str]:
    """Render every template a few times, and make a few conversations per topic, to surface
    what only sampling shows: a message past the length limit, unavoidable never_say phrases."""
    try:
        sampler = Sampler(persona)
    except GuppyError as exc:
        return [str(exc)]
    errors = []
    for t in sampler.compiled.topics:
        steps = [(t.ask, t.say), *t.follow_ups]
        for k, (template, compiled) in enumerate(
            x for pair in steps for side in pair for x in side
        ):
            try:
                for i in range(tries):  # u=None: plain random draws, a different mix each time
                    sampler._render(template, compiled, {}, Draw(sampler.grammar, f"{k}:{i}"))
            except GuppyError as exc:
                errors.append(str(exc))
        try:
            for i in range(tries):
                sampler.conversation(i, turns=len(steps), topic=t.name)
        except GuppyError as exc:
            errors.append(str(exc))
    return list(dict.fromkeys(errors))  # a template's error once, even if a conversation hit it


def pairing_problems(compiled, strict: bool) -> tuple[list[str], list[str]]:
    """(errors, warnings) of the pairing rule for every topic (see conversations.py)."""
    errors, warnings = [], []
    for t in compiled.topics:
        e, w = check_pairing(t.name, t.stages, strict)
        errors += e
        warnings += w
    return errors, warnings


def sentence_warnings(sampler: Sampler) -> list[str]:
    """A reply template that can make more sentences than style.max_sentences allows.

    Counted from the text: literal sentence ends plus, per symbol, the most any of its values
    has (exact for plain templates); templates with logic are rendered a few times instead.
    """
    limit = sampler.persona.style.max_sentences
    if not limit:
        return []
    out = []
    most: dict[str, int] = {}
    for t in sampler.compiled.topics:
        for st in t.stages:
            for template, c in st.says:
                n = _most_sentences(sampler, c, most)
                if n > limit:
                    out.append(
                        f"{template.where}: can make {n} sentences, more than "
                        f"style.max_sentences ({limit}); generation keeps the {limit} "
                        "longest. Shorten it, or raise max_sentences"
                    )
    return out


def _most_sentences(sampler: Sampler, c, most: dict) -> int:
    if c.parts is None:
        draws = (Draw(sampler.grammar, f"sentences:{i}") for i in range(_SAMPLES))
        texts = (sampler._render(_NOWHERE, c, {}, d) for d in draws)
        return max((len(SENTENCE_END.findall(tidy(x))) for x in texts), default=0)
    n = 0
    for p in c.parts:
        if isinstance(p, str):
            n += len(SENTENCE_END.findall(p))
        else:
            if p[1] not in most:
                values, _ = sampler.grammar.values(p[1], 2_000)
                most[p[1]] = max((len(SENTENCE_END.findall(v.strip())) for v in values), default=0)
            n += most[p[1]]
    return n


def placeholder_warnings(persona: Persona, at=None) -> list[str]:
    """Values that still hold the starter's TODO: text, each at its `file:line:col`.

    `at` maps a key path (("topics", "help", "say", 0)) to its place in the file (Doc.at)."""
    out = []

    def walk(value, path: tuple) -> None:
        if isinstance(value, str) and PLACEHOLDER in value:
            where = at(path) if at else str(persona.path)
            dotted = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path)[1:]
            out.append(
                f"{where}: {dotted}: still holds the starter's placeholder "
                f"'{PLACEHOLDER}'. Replace it with your character's own text"
            )
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, (*path, k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, (*path, i))

    walk(persona.raw, ())
    return out


# --- Lints about what a reply answers: warnings `validate` gives with the lines involved.
#
# Pairing (conversations.py) decides which replies may answer which questions; these point at the places
# where the pairing is allowed but reads badly:
# - a reply that reads none of the values an open question names ("what do you think of
#   {{ thing }}" answered by a reply about something else): it answers every such question alike
#   (a yes-or-no question, "do you want some {{ food }}", may well be answered "always.");
# - a follow-up that asks both for a reason ("why") and for something else ("what else do you
#   like"): every reply of the step answers every one of its questions, so a reason is given to
#   "what else" and the reverse.

_WORD_ANY = re.compile(r"[^\W\d_]+")
_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)


def reply_lints(compiled) -> list[str]:
    """Every lint of every topic, at `file:line:col`."""
    out = []
    for t in compiled.topics:
        out += _ignored_values(t)
        for k, st in enumerate(t.stages[1:]):
            out += _unlike_questions(t.name, k, st)
    return out


def _ignored_values(t) -> list[str]:
    """A reply that answers questions naming a value, and reads none of those values."""
    first = t.stages[0]
    out = []
    for s, (reply, rc) in enumerate(first.says):
        reads = set(rc.symbols) | set(rc.picks)
        asked = []
        for a, s2 in first_pairs(first, (0, 0)):
            question = first.asks[a][0]
            name = _named_value(question, first) if s2 == s else None
            if name and name not in reads:
                asked.append((question, name))
        if asked:
            q, name = asked[0]
            more = f" (and {len(asked) - 1} more)" if len(asked) > 1 else ""
            out.append(
                f"{reply.where}: answers the open question (one a yes or no cannot answer) at "
                f"line {q.line}:{q.column}{more}, which names a {{{{ {name} }}}}, but never "
                f"mentions it, so it gives the "
                f"same answer whatever {name} was asked about. Echo {{{{ {name} }}}} in "
                "the reply, or move the reply to a topic whose questions name nothing"
            )
    return out


def _compiled(stage, template):
    return next(c for t, c in stage.asks if t is template)


def _named_value(template, stage) -> str | None:
    """The symbol a question is about ("think of {{ thing }}"), not a greeting or filler
    symbol: one that stands where the question's object would. None if there is none."""
    if _kind(template.text) not in ("open", "reason"):
        return None  # "do you want some {{ food }}" -> "always." answers it well enough
    c = _compiled(stage, template)
    for name in stated(c):
        if re.search(
            r"\b(of|like|about|love|hate|want|eat|favourite)\s+"
            r"(some |the |a |an |your )?\{\{\s*" + re.escape(name) + r"\b",
            template.text,
        ):
            return name
    return None


def _unlike_questions(topic: str, k: int, st) -> list[str]:
    """Questions of one follow-up that ask for another kind of answer than the rest of it: a
    reason ("why") where the others ask for something else ("what else..."), or the reverse."""
    kinds = [_kind(t.text) for t, _ in st.asks]
    if not {"reason", "more"} <= set(kinds):
        return []
    known = [x for x in kinds if x in ("reason", "more")]
    usual = max(dict.fromkeys(known), key=known.count)  # a tie: the kind asked first
    out = []
    for (t, _), kind in zip(st.asks, kinds, strict=True):
        if kind in ("reason", "more") and kind != usual:
            like = next(q for (q, _), x in zip(st.asks, kinds, strict=True) if x == usual)
            out.append(
                f"{t.where}: asks for {_KINDS[kind]}, unlike the question at line "
                f"{like.line}:{like.column} ({_KINDS[usual]}) of the same follow-up, yet "
                "every reply of that follow-up answers both. Give it a follow-up of its "
                "own, or reword it as the same kind of question"
            )
    return out


_KINDS = {
    "reason": "a reason",
    "more": "something else",
    "yesno": "a yes or no",
    "open": "an open answer",
}
_AUX = {
    "do",
    "does",
    "did",
    "are",
    "is",
    "was",
    "were",
    "can",
    "could",
    "will",
    "would",
    "have",
    "has",
    "should",
    "may",
    "shall",
    "am",
}


def _kind(text: str) -> str | None:
    """What a question asks for. Only a reason ("why", "how come", "what made...") against
    something else ("what else...", "anything else") counts as unlike: a reply written as
    the reason ("it makes me feel calm.") reads wrong after "what else do you like"."""
    words = _WORD_ANY.findall(_JINJA.sub(" ", text).lower())
    if not words:
        return None
    if words[0] == "why" or words[:2] in (["how", "come"], ["what", "for"], ["what", "made"]):
        return "reason"
    if {"else", "other"} & set(words[:3]):
        return "more"
    if words[0] in _AUX:
        return "yesno"
    if words[0] in {"what", "which", "where", "when", "who", "how", "tell"}:
        return "open"
    return None
    if words[0] == "why" or words[:2] == ["how", "come"] or words[:2] == ["what", "for"]:
        return "reason"
    if words[0] in _AUX:
        return "yesno"
    if words[0] in {"what", "which", "where", "when", "who", "how", "anything", "tell"}:
        return "open"
    return None
