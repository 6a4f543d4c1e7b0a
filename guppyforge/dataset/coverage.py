"""Which everyday messages a persona answers, before any training: `guppyforge coverage`.

Strangers do not type a persona's ask lines; they type what people always send a character ("r u
ok", "whats ur name", "i had a bad day"). The package ships a stranger bank of such messages
(personas/strangers/LANG.yaml), written without any persona in mind and grouped by intent, with a
held-out part that no persona and no part of this tool is tuned on. Coverage asks, for each
message, whether the persona's data holds a user message that says the same thing:

    the persona's rows, drawn as `generate` draws them (variation included), user messages only
      -> each normalised (persona/variation.py: case, text-speak, contractions, fillers undone)
      -> BM25 (the `bm25s` library) finds the closest few to a bank message
      -> answered when the closest covers at least COVERED of the message's content words
         (a message of only small words, "how r u", when one says exactly that)

The held-out part gives the figure (`coverage`): how much of what strangers send the file
answers, measured where nobody tuned to it. It is not yet a predictor of a trained model's blind
pass rate: on the characters measured so far a file widened from 35 % to 54 % coverage gained one
point of blind rate at a 5-minute budget (bench/bench_coverage.py fits the two). The rest of the
bank is shown to the author: the messages nothing answers, grouped by intent, each intent with
where in the file it would go.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from guppyforge.errors import GuppyError
from guppyforge.files import personas_dir
from guppyforge.persona.variation import normalise

ROWS = 6_000  # rows drawn from the persona: every topic's asks, varied as generate varies them
PER_TOPIC = 40  # more conversations of each topic: its every ask pattern, however light
CLOSEST = 8  # candidates BM25 gives for a message, then scored by the words they share
COVERED = 0.5  # more than this share of a message's content words must be in the closest
SHOWN = 3  # unanswered messages printed per intent
# Words that carry no meaning of their own in a chat message; what is left is what it is about.
SMALL = frozenset(
    "a an the i me my mine you your yours we our us they them their it its is are am was were be "
    "been being do does did doing have has had having will would can could should shall may might "
    "must to of in on at for with about as by from up down out off over into onto and or but so "
    "if then than that this these those there here what which who whom whose when where why how "
    "not no yes just very really too also any some all much many more most own same such only "
    "ever even still again now then please okay ok oh well hey hi hello um like get got go going "
    "want know think".split()
)
_WORD = re.compile(r"[a-z0-9]+")


def stem(word: str) -> str:
    """A word's crude stem, so "worms" meets "worm" and "scared" meets "scare"."""
    for tail, keep in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if word.endswith(tail) and len(word) - len(tail) >= 3 and not word.endswith("ss"):
            return word[: -len(tail)] + keep
    return word.replace("favorite", "favourite")


# Short forms strangers type that variation never writes (so the split never needed them):
# read here so that "sry" meets the file's "sorry".
READ_SPEAK = {
    "sry": "sorry", "soz": "sorry", "srry": "sorry", "tysm": "thank you so much",
    "thnks": "thanks", "thanx": "thanks", "ily": "i love you", "ilysm": "i love you so much",
    "np": "no problem", "nvm": "never mind", "brb": "be right back", "gn": "good night",
    "gm": "good morning", "hbu": "how about you", "wbu": "what about you", "ikr": "i know right",
    "jk": "just kidding", "lmk": "let me know", "ofc": "of course", "bday": "birthday",
    "hw": "homework", "sup": "what is up", "wassup": "what is up", "wyd": "what are you doing",
    "hru": "how are you", "gr8": "great", "l8r": "later", "b4": "before", "2day": "today",
}  # fmt: skip
_SPEAK_WORD = re.compile(r"\b(" + "|".join(READ_SPEAK) + r")\b", re.I)


def content(text: str, names: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """(all the words of a message after `normalise`, its content words as stems)."""
    text = _SPEAK_WORD.sub(lambda m: READ_SPEAK[m[0].lower()], text)
    words = _WORD.findall(normalise(text, names))
    mine = {w for n in names for w in n.lower().split()}
    return words, [stem(w) for w in words if w not in SMALL and w not in mine]


@dataclass
class Intent:
    """One intent of the stranger bank: what it is, where it would go, its two parts."""

    name: str
    where: str
    train: list[str]
    heldout: list[str]


@lru_cache(maxsize=4)
def stranger_bank(language: str = "en") -> tuple[Intent, ...]:
    """The stranger bank of `language`, from the shipped file (personas/strangers/)."""
    import yaml

    path = personas_dir() / "strangers" / f"{language.split('-')[0]}.yaml"
    if not path.is_file():
        raise GuppyError(
            f"coverage: no stranger bank for language '{language}' yet (personas/strangers/ has "
            f"{', '.join(sorted(p.stem for p in path.parent.glob('*.yaml')))})"
        )
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return tuple(
        Intent(name, v["where"], list(v["train"]), list(v["heldout"]))
        for name, v in data["intents"].items()
    )


@dataclass
class Coverage:
    """What `coverage` found for one persona."""

    persona: str
    heldout: float  # the figure: share of held-out bank messages answered
    train: float  # the same on the part authors may read
    messages: int  # user messages of the persona's data looked at (distinct, normalised)
    missing: dict[str, list[str]] = field(default_factory=dict)  # intent -> unanswered (train)
    nearest: dict[str, Counter] = field(default_factory=dict)  # intent -> topics answering it
    where: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # intent -> its train messages

    def summary(self) -> str:
        return (
            f"coverage: {self.heldout:.0%} of the stranger bank's held-out messages answered "
            f"({self.train:.0%} of the rest)"
        )

    def report(self, shown: int = SHOWN) -> str:
        """The summary, then the intents with unanswered messages, most missing first."""
        lines = [self.summary()]
        order = sorted(self.missing, key=lambda i: (-len(self.missing[i]), i))
        for intent in order:
            miss = self.missing[intent]
            if not miss:
                continue
            near = self.nearest[intent].most_common(1)
            fix = f"add a topic for {self.where[intent]}"
            if near:
                fix = f"widen topics.{near[0][0]} (the closest) with asks like these, or {fix}"
            lines.append(f"  {intent}: {len(miss)} of {self.sizes[intent]} unanswered: {fix}")
            lines += [f"      {m!r}" for m in miss[:shown]]
        return "\n".join(lines)


def user_messages(persona, seed: int = 0, rows: int = ROWS) -> list[tuple[str, str]]:
    """(text, topic) of the user messages in `rows` of the persona's data, as generate draws
    them (its turn mix and variation; no off-topic rows, which deflect rather than answer),
    and PER_TOPIC more of each topic as written, so a light topic's asks are all looked at."""
    from guppyforge.dataset.draw import draw_range, row_makers, turn_mix

    sampler, seed, varier, _ = row_makers(persona, seed)
    mix = turn_mix(None, persona)
    longest = max(turns for turns, _ in mix)
    out = []
    for row, _unvaried in draw_range(sampler, seed, 0, rows, mix, varier):
        messages, topic = row[0], row[1]
        out += [(text, topic) for role, text in messages if role == "user"]
    for name in sampler.topics:
        for i in range(PER_TOPIC):
            c = sampler.conversation(rows + i, turns=longest, topic=name)
            out += [(m["content"], name) for m in c.messages if m["role"] == "user"]
    for c in sampler.examples():
        out += [(m["content"], c.topic) for m in c.messages if m["role"] == "user"]
    return out


def persona_coverage(persona, seed: int = 0, rows: int = ROWS) -> Coverage:
    """Coverage of the stranger bank in the persona's language by the persona's data."""
    import bm25s

    names = tuple(n.lower() for n in {persona.name, persona.display_name} if n)
    seen: dict[str, tuple[list[str], list[str], str]] = {}
    for text, topic in user_messages(persona, seed, rows):
        words, stems = content(text, names)
        seen.setdefault(" ".join(words), (words, stems, topic))
    docs = list(seen.values())
    exact = {" ".join(w): topic for w, _, topic in docs}
    index = bm25s.BM25()
    index.index([stems or ["_"] for _, stems, _ in docs], show_progress=False)

    def answer(message: str) -> tuple[str | None, float]:
        """(the topic whose user message shares most of `message`'s content words, the share
        shared); a message of small words only is matched whole."""
        words, stems = content(message, names)
        key = " ".join(words)
        if key in exact:
            return exact[key], 1.0
        if not stems or not index.get_tokens_ids(stems):
            return None, 0.0
        k = min(CLOSEST, len(docs))
        found, scores = index.retrieve([stems], k=k, show_progress=False, n_threads=0)
        want, best = set(stems), (None, 0.0)
        for d, score in zip(found[0], scores[0], strict=True):
            shared = len(want & set(docs[int(d)][1])) / len(want)
            if score > 0 and shared > best[1]:
                best = (docs[int(d)][2], shared)
        return best

    lang = getattr(persona, "language", None) or "en"
    result = Coverage(persona.name, 0.0, 0.0, len(docs))
    hits = {"train": [0, 0], "heldout": [0, 0]}
    for intent in stranger_bank(lang):
        result.where[intent.name], result.sizes[intent.name] = intent.where, len(intent.train)
        result.missing[intent.name], result.nearest[intent.name] = [], Counter()
        for part, messages in (("train", intent.train), ("heldout", intent.heldout)):
            for message in messages:
                topic, shared = answer(message)
                hits[part][0] += shared > COVERED
                hits[part][1] += 1
                if part == "train" and shared <= COVERED:
                    result.missing[intent.name].append(message)
                elif part == "train":  # the topic that answers this intent: the one to widen
                    result.nearest[intent.name][topic] += 1
    result.heldout = hits["heldout"][0] / max(1, hits["heldout"][1])
    result.train = hits["train"][0] / max(1, hits["train"][1])
    return result


def coverage(path: str | Path, seed: int = 0) -> Coverage:
    """`guppyforge coverage PERSONA`: a file, or a built-in's name."""
    from guppyforge.files import builtin_persona
    from guppyforge.persona.schema import load_persona

    path = Path(path)
    path = path if path.exists() else builtin_persona(str(path)) or path
    return persona_coverage(load_persona(path), seed)
