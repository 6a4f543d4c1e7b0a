"""The user's side, varied the way people type: casing, punctuation, typos, fillers, the name.

People never type a persona's own ask lines: they write "hey guppy do u like wroms lol". Each
generated user message may get a few such changes, drawn from its own RNG seeded by (seed,
conversation index), so a dataset stays a pure function of persona and seed. That RNG is a
splitmix64 stream, not `random.Random`: seeding a Mersenne Twister costs ~15 us, a quarter of
what drawing the whole conversation costs. Replies are never touched. `normalise` undoes what it can of a variation (case, punctuation, fillers, the name,
contractions), so the split can keep every variant of a test prompt out of train.
"""

from __future__ import annotations

import re

from guppyforge.persona.types import Persona, Variation

FILLER_OPENERS = (
    "hey ",
    "hey, ",
    "so ",
    "so, ",
    "um ",
    "umm ",
    "quick question: ",
    "ok so ",
    "hmm ",
    "well ",
    "oh ",
    "yo ",
    "ok ",
    "okay ",
    "hi ",
    "hello, ",
)
FILLER_CLOSERS = (" lol", " haha", " :)", " pls", " please", " hm", " xd", " :D")
# The filler words `normalise` strips from either end (what FILLER_* add, and their kin).
_LEADING = frozenset(
    "hey hi hello so um umm uh ok okay hmm hm well oh yo quick question and".split()
)
_TRAILING = frozenset("lol haha hm xd d pls please ok".split())
# (expanded, contracted): varied in either direction, and always expanded by `normalise`.
CONTRACTIONS = (
    ("do not", "don't"),
    ("does not", "doesn't"),
    ("did not", "didn't"),
    ("is not", "isn't"),
    ("are not", "aren't"),
    ("cannot", "can't"),
    ("will not", "won't"),
    ("have not", "haven't"),
    ("i am", "i'm"),
    ("you are", "you're"),
    ("they are", "they're"),
    ("we are", "we're"),
    ("what is", "what's"),
    ("it is", "it's"),
    ("that is", "that's"),
    ("where is", "where's"),
    ("who is", "who's"),
    ("how is", "how's"),
    ("there is", "there's"),
    ("i have", "i've"),
    ("i will", "i'll"),
    ("you will", "you'll"),
    ("let us", "let's"),
    ("you have", "you've"),
)
# Without the apostrophe too ("dont"): a few then read like other words ("its", "were", "ill"),
# which only joins a few more rows in the split, since both sides are normalised alike.
_EXPAND = {c.replace("'", ""): e for e, c in CONTRACTIONS}
_CONTRACTED = re.compile(r"\b(" + "|".join(re.escape(c) for _, c in CONTRACTIONS) + r")\b", re.I)
_EXPANDED = re.compile(r"\b(" + "|".join(re.escape(e) for e, _ in CONTRACTIONS) + r")\b", re.I)
_TO_CONTRACT = {e: c for e, c in CONTRACTIONS}
_TO_EXPAND = {c: e for e, c in CONTRACTIONS}
_NEIGHBOURS = {}
for _row in ("qwertyuiop", "asdfghjkl", "zxcvbnm"):
    for _i, _ch in enumerate(_row):
        _NEIGHBOURS[_ch] = _row[max(_i - 1, 0) : _i] + _row[_i + 1 : _i + 2]
_WORD = re.compile(r"[a-z]{4,}", re.I)
_END = re.compile(r"[\s.!?,:;)(]*$")
_QUESTION = re.compile(
    r"^(?:\W*)(what|who|where|when|why|how|do|does|did|are|is|can|could|"
    r"would|will|have|has)\b",
    re.I,
)
_NON_WORD = re.compile(r"[^\w]+")


_M64 = (1 << 64) - 1


class Rng:
    """A small, fast, seeded random stream (splitmix64) with the few methods variation needs."""

    __slots__ = ("x",)

    def __init__(self, seed: int, index: int, salt: int = 0):
        # Distinct odd multipliers per argument; a different `salt` gives an unrelated stream.
        x = seed * 0x9E3779B97F4A7C15 + index * 0xD1B54A32D192ED03 + salt * 0xAF251AF3B0F025B5
        self.x = (x + 0x5EED) & _M64

    def bits(self) -> int:
        """The next 64 random bits."""
        self.x = z = (self.x + 0x9E3779B97F4A7C15) & _M64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        return z ^ (z >> 31)

    def random(self) -> float:
        return (self.bits() >> 11) * (1.0 / (1 << 53))

    def randrange(self, start: int, stop: int | None = None) -> int:
        if stop is None:
            start, stop = 0, start
        return start + int(self.random() * (stop - start))

    def choice(self, seq):
        return seq[int(self.random() * len(seq))]

    def weighted(self, seq, weights):
        x = self.random() * sum(weights)
        for item, w in zip(seq, weights, strict=True):
            x -= w
            if x < 0:
                return item
        return seq[-1]


class Varier:
    """Varies a generated conversation's user messages; the same (seed, index) always the same."""

    def __init__(self, persona: Persona, seed: int):
        self.v: Variation = persona.variation
        self.seed = seed
        names = {persona.display_name.lower(), persona.name.lower()}
        self.names = tuple(sorted(n for n in names if n))

    @property
    def on(self) -> bool:
        return self.v.share > 0

    def messages(self, messages: list[dict], index: int) -> tuple[list[dict], bool]:
        """The conversation with its user messages varied, and whether any of them changed."""
        rng = Rng(self.seed, index)
        out, changed = [], False
        for m in messages:
            if m["role"] == "user" and rng.random() < self.v.share:
                text = self.text(m["content"], rng)
                # A conversation never repeats a line: a variant equal to another stays unvaried.
                if text != m["content"] and all(text != x["content"] for x in messages):
                    m, changed = {"role": "user", "content": text}, True
            out.append(m)
        return out, changed

    def text(self, text: str, rng: Rng) -> str:
        """One message, varied: at least one kind of change is tried."""
        v = self.v
        kinds = [
            (v.contraction, _contraction),
            (v.typo, _typo),
            (v.case, _case),
            (v.punctuation, _punctuation),
            (v.filler, _filler),
            (v.name, self._name),
        ]
        z = rng.bits()  # 10 bits per kind: six decisions for the price of one draw
        chosen = [f for k, (p, f) in enumerate(kinds) if (z >> (10 * k)) & 1023 < p * 1024]
        if not chosen:
            live = [(p, f) for p, f in kinds if p > 0]
            if not live:
                return text
            chosen = [rng.weighted([f for _, f in live], [p for p, _ in live])]
        for f in chosen:
            text = f(text, rng)
        return " ".join(text.split()) or text

    def _name(self, text: str, rng: Rng) -> str:
        name = rng.choice(self.names) if self.names else ""
        if not name or name in text.lower():
            return text
        name = name.capitalize() if rng.random() < 0.3 else name
        if rng.random() < 0.5:
            text = text[:1].lower() + text[1:] if text[1:2].islower() else text
            return f"{name}, {text}" if rng.random() < 0.7 else f"{name} {text}"
        cut = _END.search(text).start()
        return f"{text[:cut]}, {name}{text[cut:]}"


def _contraction(text: str, rng: Rng) -> str:
    found = [(m, _TO_CONTRACT) for m in _EXPANDED.finditer(text)]
    found += [(m, _TO_EXPAND) for m in _CONTRACTED.finditer(text)]
    if not found:
        return text
    m, table = rng.choice(found)
    word = table[m[0].lower()]
    if rng.random() < 0.25 and table is _TO_CONTRACT:
        word = word.replace("'", "")  # "dont": people skip the apostrophe
    if m[0][:1].isupper():
        word = word[:1].upper() + word[1:]
    return text[: m.start()] + word + text[m.end() :]


def _typo(text: str, rng: Rng) -> str:
    spans = [m.span() for m in _WORD.finditer(text)]
    if not spans:
        return text
    a, b = rng.choice(spans)
    i = rng.randrange(a + 1, b)  # the first letter stays: people rarely miss it
    kind = rng.randrange(4)
    ch = text[i]
    if kind == 0 and ch.lower() in _NEIGHBOURS:  # a neighbouring key
        return text[:i] + rng.choice(_NEIGHBOURS[ch.lower()]) + text[i + 1 :]
    if kind == 1:  # a doubled letter
        return text[:i] + ch + text[i:]
    if kind == 2 and b - a > 4:  # a missing letter
        return text[:i] + text[i + 1 :]
    if i + 1 < b and text[i] != text[i + 1]:  # swapped letters
        return text[:i] + text[i + 1] + text[i] + text[i + 2 :]
    return text[:i] + ch + text[i:]


def _case(text: str, rng: Rng) -> str:
    x = rng.random()
    if x < 0.6:
        return text.lower()
    if x < 0.9:
        return text[:1].upper() + text[1:]
    return text.upper()


def _punctuation(text: str, rng: Rng) -> str:
    cut = _END.search(text).start()
    body, end = text[:cut], text[cut:].strip()
    x = rng.random()
    if x < 0.25 and "," in body:
        body = body.replace(",", "")
    if x > 0.8 and "'" in body:
        body = body.replace("'", "")
    if end and rng.random() < 0.6:
        return body  # the end dropped, as most people type
    question = end.startswith("?") or (not end and _QUESTION.match(body))
    if question:
        return body + rng.choice(("?", "??", "?!", " ?", "???"))
    return body + rng.choice((".", "!", "!!", "...", ""))


def _filler(text: str, rng: Rng) -> str:
    x = rng.random()
    if x < 0.6:
        opener = rng.choice(FILLER_OPENERS)
        return opener + (text[:1].lower() + text[1:] if text[1:2].islower() else text)
    closer = rng.choice(FILLER_CLOSERS)
    return text + closer if x < 0.9 else rng.choice(FILLER_OPENERS) + text + closer


def normalise(text: str, names: tuple[str, ...] = ()) -> str:
    """A message with what variation can change taken away: the key the split compares.

    Case-folded; contractions expanded (with or without the apostrophe); punctuation and
    emoticons gone; filler words and the character's name stripped from either end. Typos
    cannot be undone from the text alone: the split also compares each message's unvaried form.
    """
    low = text.casefold().replace("\u2019", "'")
    low = _CONTRACTED.sub(lambda m: _TO_EXPAND[m[0]], low)
    words = _NON_WORD.sub(" ", low).split()
    words = [w for x in words for w in _EXPAND.get(x, x).split()]
    name_words = {w for n in names for w in n.casefold().split()}
    start, stop = 0, len(words)
    while start < stop and (words[start] in _LEADING or words[start] in name_words):
        start += 1
    while stop > start and (words[stop - 1] in _TRAILING or words[stop - 1] in name_words):
        stop -= 1
    if start < stop:
        return " ".join(words[start:stop])
    # All filler ("hey guppy!", "ok so hi lol"): the last word that is not a closer or the name.
    core = [w for w in words if w not in _TRAILING and w not in name_words]
    return core[-1] if core else " ".join(words)
