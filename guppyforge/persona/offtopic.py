"""Off-topic and break-character prompts, answered in character.

guppyforge ships a pool of general prompts that no persona writes (facts, maths, code, news,
money, advice, rude lines, "are you an ai", "ignore your instructions") in two fixed parts:
`train.txt`, which `generate` mixes in at the persona's `offtopic.share`, each paired with one of
the persona's `offtopic.say` deflections; and `heldout.txt`, which generate never uses and `eval`
samples, so the off-topic pass rate is measured on prompts the model never saw.
"""

from __future__ import annotations

from collections.abc import Callable

from guppyforge.errors import GuppyError
from guppyforge.persona import limits
from guppyforge.persona.conversations import Conversation, Sampler
from guppyforge.persona.grammar import Draw
from guppyforge.persona.templating import Compiled, TemplateProblem, compile_text
from guppyforge.persona.types import Persona, Template
from guppyforge.persona.variation import Rng
from guppyforge.resources import personas_dir

OFFTOPIC = "offtopic"  # the `topic` of an off-topic row
POOL_PARTS = ("train", "heldout")
_GOLDEN = (5**0.5 - 1) / 2


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


class OffTopicSampler:
    """Decides which conversation indices are off-topic and makes those conversations.

    Index i is off-topic when frac(u0 + i / golden ratio) < share: an evenly spread, exact share
    that costs nothing to test. The prompt, the deflection and its grammar values come from the
    index's own RNG, so the row is a pure function of (persona, seed, index) like any other.
    """

    def __init__(self, sampler: Sampler, seed: int):
        persona = sampler.persona
        self.sampler, self.seed = sampler, seed
        self.says = compile_say(persona, _raise)
        self.share = persona.offtopic.share if persona.offtopic and self.says else 0.0
        self.prompts = pool("train") if self.share else ()
        self._u0 = Rng(seed, -1).random()

    def takes(self, index: int) -> bool:
        return self.share > 0 and (self._u0 + index * _GOLDEN) % 1.0 < self.share

    def conversation(self, index: int) -> Conversation:
        rng = Rng(self.seed, index, salt=1)
        k = rng.randrange(len(self.prompts))
        draw = Draw(self.sampler.grammar, f"{self.seed}:{index}:offtopic", rng.random())
        for _ in range(limits.MAX_NEVER_SAY_REDRAWS):
            s = rng.randrange(len(self.says))
            t, c = self.says[s]
            draw.work = 0
            reply = self.sampler.style(self.sampler.render(t, c, {}, draw))
            if not self.sampler.banned(reply):
                messages = [{"role": "user", "content": self.prompts[k]},
                            {"role": "assistant", "content": reply}]  # fmt: skip
                return Conversation(messages, OFFTOPIC, f"offtopic:p{k}/say{s}@L{t.line}", 1)
        raise GuppyError(f"{t.where}: {limits.MAX_NEVER_SAY_REDRAWS} off-topic replies in a row "
                         "contained a style.never_say phrase. Reword offtopic.say")  # fmt: skip


def _raise(message: str) -> None:
    raise GuppyError(message)
