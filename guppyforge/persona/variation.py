"""The user's side, varied the way people type: other phrasings of the same question,
text-speak, dropped words, letter runs, contractions, typos, casing, punctuation, fillers, the name.

People never type a persona's own ask lines: they write "hey guppy do u like wroms lol", or
"thoughts on worms?" to a file that wrote "do you like worms". A persona's author should not have
to write how strangers type: each generated user message may get a few such changes, drawn from
its own RNG seeded by (seed, conversation index), so a dataset stays a pure function of persona
and seed. That RNG is a splitmix64 stream, not `random.Random`: seeding a Mersenne Twister costs
~15 us, a quarter of what drawing the whole conversation costs. Replies are never touched.
`normalise` undoes what it can of a variation (case, punctuation, fillers, the name,
contractions, text-speak, letter runs), so the split can keep every variant of a test prompt out
of train; what it cannot undo (a paraphrase, a typo, a dropped word) the split catches by also
comparing each message's unvaried form.

How often each change happens, as measured in people's chat text (the defaults in types.py):
- A quarter of the words in university students' text messages are non-standard, most of them
  missing capitals (Lyddy et al. 2014, "An analysis of language in university students' text
  messages", JCMC 19(3): 546-561): casing is the commonest change.
- Short forms are about 2.4 % of the words of teenagers' instant messages, and "you" is written
  "u" about once in ten (Tagliamonte & Denis 2008, "Linguistic ruin? LOL! Instant messaging and
  teen language", American Speech 83(1), as reported; we could not read its tables). At ~6 words
  a chat message (Thurlow & Brown 2003, "Generation txt?") that is one message in seven: text-speak
  goes into 0.3 of the varied half of messages, 15 % of them.
- Only 29 % of college students' text messages end in punctuation (Ling & Baron 2007, as
  reported): a varied message loses its end 7 times in 10 when its punctuation changes.
- Letter runs ("sooo") are common in tweets (Brody & Diakopoulos 2011, "Cooooooooooooooollllllllll
  llll!!!!!!!!!!!!!!", EMNLP), usually two or three extra letters; we found no per-message rate we
  could check, so they stay rare (0.1 of varied messages).
"""

from __future__ import annotations

import re
from functools import lru_cache

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
# "X have" contracts only where `have` is the helper verb ("i've been", "you've got"), never the
# main one ("do you have a family" is not "do you've a family", nor "i have to" "i've to").
_HAVE_HELPS = frozenset(
    "been got gotten seen had done never ever already just not made heard eaten tried found lost "
    "met known taken given gone written read told left forgotten finished".split()
)
_SUBJECTS = frozenset("i you we they he she it there".split())
# Text-speak, English: a phrase and the short forms people write for it (the first is the one
# `normalise` expands to). Words and phrases are matched whole; longer phrases first.
TEXT_SPEAK = (
    ("what are you doing", ("wyd", "wat u doin", "what u doing")),
    ("i do not know", ("idk", "i dunno", "dunno")),
    ("i don't know", ("idk", "i dunno", "dunno")),
    ("oh my god", ("omg",)),
    ("by the way", ("btw",)),
    ("to be honest", ("tbh",)),
    ("talk to you later", ("ttyl",)),
    ("right now", ("rn",)),
    ("going to", ("gonna",)),
    ("want to", ("wanna",)),
    ("got to", ("gotta",)),
    ("kind of", ("kinda",)),
    ("let me", ("lemme",)),
    ("give me", ("gimme",)),
    ("see you", ("cya", "see ya", "c u")),
    ("thank you", ("ty", "thank u", "thx")),
    ("your", ("ur", "yr")),  # "ur" for "you're" too, but then `normalise` could not undo it
    ("you are", ("u r",)),
    ("you're", ("youre", "u r")),
    ("are you", ("r u", "are u")),
    ("you", ("u", "ya")),
    ("are", ("r",)),
    ("please", ("pls", "plz")),
    ("thanks", ("thx", "thnx", "ty")),
    ("tomorrow", ("tmrw", "tmr", "2moro")),
    ("tonight", ("tonite", "2nite")),
    ("what", ("wat", "wut")),
    ("why", ("y",)),
    ("because", ("bc", "cuz", "coz")),
    ("okay", ("k", "kk", "ok")),
    ("really", ("rly", "rlly")),
    ("people", ("ppl",)),
    ("probably", ("prob", "prolly")),
    ("though", ("tho",)),
    ("something", ("smth", "somethin")),
    ("nothing", ("nothin",)),
    ("love", ("luv",)),
    ("good", ("gud",)),
    ("night", ("nite",)),
    ("doing", ("doin",)),
    ("going", ("goin",)),
    ("with", ("w/",)),
    ("about", ("abt",)),
    ("favourite", ("fav", "fave")),
    ("favorite", ("fav", "fave")),
)
_SPEAK = re.compile(
    r"(?<![\w'])(" + "|".join(re.escape(w) for w, _ in TEXT_SPEAK) + r")(?![\w'])", re.I
)
_SPEAK_FORMS = {w: forms for w, forms in TEXT_SPEAK}
# "going to the shop" is not "gonna the shop": these phrases shorten before a verb only.
_BEFORE_VERB = frozenset(("going to", "want to", "got to"))
_NOT_A_VERB = frozenset(
    "the a an my your his her our their this that school bed work town class church it".split()
)
# What `normalise` reads a short form as (the first phrase listed for it wins).
_UNSPEAK: dict[str, str] = {}
for _w, _forms in TEXT_SPEAK:
    for _f in _forms:
        _UNSPEAK.setdefault(_f, _w.replace("'", ""))  # "youre": expanded like any "dont"
_UNSPEAK_WORDS = {f: w for f, w in _UNSPEAK.items() if " " not in f and "/" not in f}
_UNSPEAK_PHRASES = re.compile(
    r"\b(" + "|".join(re.escape(f) for f in _UNSPEAK if " " in f) + r")\b"
)
# Words people stretch ("sooo", "heyyy", "pleaseee"), and how `normalise` finds them again.
STRETCHED = tuple(
    "so hi hey no yes yeah ok please pls love lol omg yay oh wow really cute sorry thanks hello "
    "what why good nice cool sure hungry bored tired fun happy sad mean bye night now me".split()
)
_SQUEEZED = {re.sub(r"(.)\1+", r"\1", w): w for w in STRETCHED}
_RUN = re.compile(r"(.)\1{2,}")
_LETTERS = re.compile(r"[^\W\d_]+")
# A question that drops its helper verb ("are you ok" -> "you ok", "what are you doing" -> "what
# you doing"), as people type in a hurry; only with words after the subject.
_DROPPABLE = re.compile(r"^((?:what|where|why|who|when)\s+)?(are|do|have)\s+(?=(you|u)\s+\w)", re.I)
# Emoticons and hearts: never words, so the split ignores them ("<3" against ":)").
_EMOTICON = re.compile(r"<3+|</3|[:;=8xX][-o^']?[)(\]\[dDpP/\\|*3oO]+|\^_*\^|\bxd\b", re.I)
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
        kinds = [  # in the order they apply: rephrased first, then typed
            (v.paraphrase, self._paraphrase),
            (v.drop, _drop_words),
            (v.contraction, _contraction),
            (v.textspeak, _textspeak),
            (v.typo, _typo),
            (v.runs, _runs),
            (v.case, _case),
            (v.punctuation, _punctuation),
            (v.filler, _filler),
            (v.name, self._name),
        ]
        z = rng.bits() | rng.bits() << 64  # 10 bits per kind: ten decisions for two draws
        chosen = [f for k, (p, f) in enumerate(kinds) if (z >> (10 * k)) & 1023 < p * 1024]
        if not chosen:
            live = [(p, f) for p, f in kinds if p > 0]
            if not live:
                return text
            chosen = [rng.weighted([f for _, f in live], [p for p, _ in live])]
        for f in chosen:
            text = f(text, rng)
        return " ".join(text.split()) or text

    def _paraphrase(self, text: str, rng: Rng) -> str:
        """The message put another usual way (personas/frames/), its fillers and end kept."""
        lead, core, end = _frame_parts(text, self.names)
        found = _match_frame(core)
        if found is None:
            return text
        family, x = found
        frame = rng.choice(family)
        new = frame.replace("{x}", x) if x is not None else frame
        if new == core.lower():
            return text
        return lead + new + end

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
    found = [(m, _TO_CONTRACT) for m in _EXPANDED.finditer(text) if _contracts(text, m)]
    found += [(m, _TO_EXPAND) for m in _CONTRACTED.finditer(text) if _expands(text, m)]
    if not found:
        return text
    m, table = rng.choice(found)
    word = table[m[0].lower()]
    if rng.random() < 0.25 and table is _TO_CONTRACT:
        word = word.replace("'", "")  # "dont": people skip the apostrophe
    if m[0][:1].isupper():
        word = word[:1].upper() + word[1:]
    return text[: m.start()] + word + text[m.end() :]


def _contracts(text: str, m: re.Match) -> bool:
    """May `m` (an expanded form) contract here? Only before another word ("that's what you
    are" stays), and "X have" only where `have` helps another verb."""
    after = text[m.end() :].split(maxsplit=1)
    nxt = after[0].lower().strip(".,!?") if after else ""
    if not nxt or not nxt[0].isalnum():
        return False
    if m[0].lower().endswith(" have"):
        return nxt in _HAVE_HELPS or nxt.endswith(("ed", "en"))
    return True


def _expands(text: str, m: re.Match) -> bool:
    """May `m` (a contraction) expand here? Not before its subject: "don't you" is "do you
    not", never "do not you"."""
    after = text[m.end() :].split(maxsplit=1)
    return not (m[0].lower().endswith("n't") and after and after[0].lower() in _SUBJECTS)


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


def _textspeak(text: str, rng: Rng) -> str:
    """Text-speak: each phrase with a short form shortened, most of them (people who write "u"
    write "r" too); "going to the shop" keeps its "going to"."""

    def short(m: re.Match) -> str:
        phrase = m[0].lower()
        if phrase in _BEFORE_VERB:
            nxt = text[m.end() :].split(maxsplit=1)
            if not nxt or nxt[0].lower().strip(".,!?") in _NOT_A_VERB:
                return m[0]
        return rng.choice(_SPEAK_FORMS[phrase]) if rng.random() < 0.7 else m[0]

    return _SPEAK.sub(short, text)


def _drop_words(text: str, rng: Rng) -> str:
    """A question's helper verb dropped: "are you ok" -> "you ok"."""
    m = _DROPPABLE.match(text)
    if m is None:
        return text
    return text[: m.start(2)] + text[m.end(2) :].lstrip()


def _runs(text: str, rng: Rng) -> str:
    """One stretched word ("sooo", "heyyy"): its last letter two or three times more."""
    spans = [m.span() for m in _STRETCHABLE.finditer(text)]
    if not spans:
        return text
    a, b = rng.choice(spans)
    return text[:b] + text[b - 1] * rng.randrange(2, 4) + text[b:]


_STRETCHABLE = re.compile(r"(?<![\w'])(" + "|".join(STRETCHED) + r")(?![\w'])", re.I)


# --- Paraphrase frames: the usual other ways of putting a message (personas/frames/en.yaml).

_X_WORDS = 4  # what `{x}` may take: a grammar value, never a clause
_X_NEVER = frozenset("to it when that if being how what why who where".split())


@lru_cache(maxsize=1)
def _frames() -> tuple[list[tuple[re.Pattern, tuple[str, ...]]], dict[str, tuple[str, ...]]]:
    """(the frames with `{x}`, as patterns and their families; the plain frames: text ->
    family), read once from the shipped file."""
    import yaml

    from guppyforge.files import personas_dir

    text = (personas_dir() / "frames" / "en.yaml").read_text(encoding="utf-8")
    patterns, plain = [], {}
    for family in yaml.safe_load(text)["families"]:
        family = tuple(family)
        for frame in family:
            if "{x}" in frame:
                head, _, tail = frame.partition("{x}")
                pattern = re.escape(head) + rf"(?P<x>\S+(?: \S+){{0,{_X_WORDS - 1}}})"
                patterns.append((re.compile(pattern + re.escape(tail) + "$"), family))
            else:
                plain[frame] = family
    return patterns, plain


def _match_frame(core: str) -> tuple[tuple[str, ...], str | None] | None:
    """(the frame family `core` is put in, what its `{x}` holds), or None."""
    low = " ".join(core.lower().split())
    patterns, plain = _frames()
    if low in plain:
        return plain[low], None
    for pattern, family in patterns:
        m = pattern.match(low)
        if m and m["x"].split()[0] not in _X_NEVER:
            return family, m["x"]
    return None


_LEAD = re.compile(r"^((?:(?:hey|hi|hello|so|um|umm|ok|okay|oh|well|yo)\b[\s,]*)*)", re.I)


def _frame_parts(text: str, names: tuple[str, ...]) -> tuple[str, str, str]:
    """(fillers and the name in front, the message itself, its end: punctuation, emoticons)."""
    cut = _END.search(text).start()
    body, end = text[:cut], text[cut:]
    lead = _LEAD.match(body)[0]
    rest = body[len(lead) :]
    for name in names:  # "guppy, do you like worms"
        if rest.lower().startswith(name + ",") or rest.lower().startswith(name + " "):
            lead, rest = lead + rest[: len(name) + 1], rest[len(name) + 1 :].lstrip()
            lead += " " if not lead.endswith(" ") else ""
            break
    return lead, rest, end


def normalise(text: str, names: tuple[str, ...] = ()) -> str:
    """A message with what variation can change taken away: the key the split compares.

    Case-folded; contractions and text-speak expanded ("u" -> "you", "dont" -> "do not"),
    stretched words squeezed ("sooo" -> "so"); punctuation, emoticons and hearts gone; filler
    words and the character's name stripped from either end. Typos, paraphrases and dropped words
    cannot be undone from the text alone: the split also compares each message's unvaried form.
    """
    low = _EMOTICON.sub(" ", text.casefold().replace("\u2019", "'"))
    low = _LETTERS.sub(lambda m: _unstretch(m[0]), low)
    low = _CONTRACTED.sub(lambda m: _TO_EXPAND[m[0]], low)
    low = _UNSPEAK_PHRASES.sub(lambda m: _UNSPEAK[m[0]], low)
    words = _NON_WORD.sub(" ", low.replace("w/", "with ")).split()
    words = [_UNSPEAK_WORDS.get(x, x) for x in words]
    words = [w for x in " ".join(words).split() for w in _EXPAND.get(x, x).split()]
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


def _unstretch(word: str) -> str:
    """A stretched word as written ("sooo" -> "so", "cooool" -> "cool")."""
    if not _RUN.search(word):
        return word
    return _SQUEEZED.get(re.sub(r"(.)\1+", r"\1", word), _RUN.sub(r"\1\1", word))
