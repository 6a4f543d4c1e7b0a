"""What `validate` checks by making text: sample conversations, the sentence cap, placeholders.

The schema (schema.py) and the compiler (conversations.compile_persona) catch what the file says;
these checks catch what only rendering shows, each reported with the line of its template.
"""

from __future__ import annotations

import re

from guppyforge.errors import GuppyError
from guppyforge.persona.conversations import Sampler, tidy
from guppyforge.persona.grammar import Draw
from guppyforge.persona.pairing import check as check_pairing
from guppyforge.persona.types import Persona

# Text the starter persona (templates/persona.yaml.j2) marks for the author to replace.
PLACEHOLDER = "TODO:"
_ENDS = re.compile(r"[.!?]+(?=\s|$)|[。！？]+")
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
    """(errors, warnings) of the pairing rule for every topic (see pairing.py)."""
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
                    out.append(f"{template.where}: can make {n} sentences, more than "
                               f"style.max_sentences ({limit}); generation keeps the {limit} "
                               "longest. Shorten it, or raise max_sentences")  # fmt: skip
    return out


def _most_sentences(sampler: Sampler, c, most: dict) -> int:
    if c.parts is None:
        draws = (Draw(sampler.grammar, f"sentences:{i}") for i in range(_SAMPLES))
        texts = (sampler._render(_NOWHERE, c, {}, d) for d in draws)
        return max((len(_ENDS.findall(tidy(x))) for x in texts), default=0)
    n = 0
    for p in c.parts:
        if isinstance(p, str):
            n += len(_ENDS.findall(p))
        else:
            if p[1] not in most:
                values, _ = sampler.grammar.values(p[1], 2_000)
                most[p[1]] = max((len(_ENDS.findall(v.strip())) for v in values), default=0)
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
            out.append(f"{where}: {dotted}: still holds the starter's placeholder "
                       f"'{PLACEHOLDER}'. Replace it with your character's own text")  # fmt: skip
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, (*path, k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, (*path, i))

    walk(persona.raw, ())
    return out
