"""`guppyforge why`: where a reply came from, traced back to the persona lines that taught it.

Every training row records the templates that made it (`food/ask2@L102/say4@L110`), so each
training reply points at a line of persona.yaml. To trace a reply the model wrote:

1. verbatim: is the exact reply one of the training replies?
2. closest: BM25 (the `bm25s` library) ranks the training replies that share its words;
3. spans: each candidate covers the stretches of the reply that it contains word for word
   (at least MIN_SPAN words). A phrase that no candidate covers is checked against the hashes of
   every MIN_SPAN-word phrase in training (a sorted numpy array): unseen, it is new; seen, the
   replies holding it are found by exact substring search (pyarrow), and join the candidates.
   So "new" means in no training reply at all, not merely in none of the closest ones.

A reply is then `verbatim`, `recombined` (every span seen in training, never all together) or
`novel` (some words are in no training reply). The index is built on first use and cached in
RUN/trace/, keyed by the dataset's fingerprint and persona, so an edited dataset is re-indexed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field

INDEX_VERSION = 2
MIN_SPAN = 3  # words: shorter shared runs ("i am", "the") say nothing about where a reply came from
CLOSEST = 10  # BM25 candidates per reply
MAX_SOURCES = 4
# Scripts written without spaces between words (Thai, Lao, Myanmar, Khmer, Japanese kana, CJK):
# there each character counts as a word, so word matching works in every script.
_NO_SPACES = (
    "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
)
WORD = re.compile(rf"[{_NO_SPACES}]|[^\W_{_NO_SPACES}]+(?:['’][^\W_{_NO_SPACES}]+)*")
SAY_TAG = re.compile(r"say(\d+)@L(\d+)")
EXAMPLE_TAG = re.compile(r"^examples/\d+@L(\d+)")


@dataclass
class Source:
    """A training reply that covers part of the traced reply, and the persona line behind it."""

    text: str
    topic: str
    template_id: str  # the row's id, e.g. "food/ask2@L102/say4@L110"
    file: str  # the persona file the line is in
    line: int | None  # the line of the `say` template (or hand-written example) that made it
    key: str  # e.g. "topics.food.say[4]"
    template: str  # the template text on that line
    rows: int  # training rows with exactly this reply
    spans: list[tuple[int, int]] = field(default_factory=list)  # [start, end) in the traced reply

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass
class Trace:
    """Where a reply came from: its kind, the sources that cover it, and the spans that are new."""

    reply: str
    kind: str  # "verbatim" | "recombined" | "novel"
    sources: list[Source]
    new: list[tuple[int, int]]  # [start, end) character spans found in no training reply
    words: int
    seen_words: int

    def to_dict(self) -> dict:
        out = asdict(self)
        for s, src in zip(out["sources"], self.sources, strict=True):
            s["where"] = src.where
            s["covers"] = [self.reply[a:b] for a, b in src.spans]
        out["new_text"] = [self.reply[a:b] for a, b in self.new]
        return out


def words(text: str) -> list[str]:
    """Lower-cased words (`casefold`, so any case matches), punctuation dropped."""
    return WORD.findall(text.casefold())


def word_spans(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Case-folded words and their character spans (the words `eval` matches)."""
    found = list(WORD.finditer(text.casefold()))
    return [m.group() for m in found], [m.span() for m in found]


def _hash(phrase: list[str]) -> int:
    """A stable 64-bit hash of a phrase (Python's own `hash` changes with every process)."""
    return int.from_bytes(
        hashlib.blake2b(" ".join(phrase).encode(), digest_size=8).digest(), "little"
    )


def gram_hashes(table):
    """The sorted, distinct hashes of every MIN_SPAN-word phrase in the replies' `norm` column."""
    import numpy as np

    grams = set()
    for norm in table.column("norm").to_pylist():
        w = norm.split()
        grams.update(_hash(w[i : i + MIN_SPAN]) for i in range(len(w) - MIN_SPAN + 1))
    return np.array(sorted(grams), dtype=np.uint64)


def _runs(reply: list[str], cand: list[str], least: int) -> list[tuple[int, int]]:
    """Maximal stretches [i, j) of `reply` that appear word for word in `cand`, >= least long."""
    at: dict[str, list[int]] = {}
    for j, w in enumerate(cand):
        at.setdefault(w, []).append(j)
    out, end = [], 0
    for i, w in enumerate(reply):
        best = 0
        for j in at.get(w, ()):
            n = 0
            while i + n < len(reply) and j + n < len(cand) and reply[i + n] == cand[j + n]:
                n += 1
            best = max(best, n)
        if best >= least and i + best > end:  # not inside the previous stretch
            out.append((i, i + best))
            end = i + best
    return out


class TraceIndex:
    """The training replies of one dataset, searchable by words and by exact phrase."""

    def __init__(self, table, bm25, meta: dict, grams=None):
        import numpy as np

        self.table, self.bm25, self.meta = table, bm25, meta
        # Every MIN_SPAN-word phrase of the training replies, hashed and sorted: a phrase not in
        # here is new without scanning a single reply.
        self.grams = np.asarray(grams if grams is not None else gram_hashes(self.table), np.uint64)
        self.texts = table.column("text").to_pylist()
        self._exact = {t: i for i, t in enumerate(self.texts)}
        self._norm = table.column("norm")  # " w1 w2 ... ": phrase search at word boundaries
        self._low = table.column("low")  # " " + the text in lower case: `continuing` looks here
        self.templates = {int(k): v for k, v in meta["templates"].items()}
        self.file = meta["persona_file"]

    # --- tracing -----------------------------------------------------------------------------

    def trace(self, reply: str) -> Trace:
        reply = reply.strip()
        words, spans = word_spans(reply)
        if reply in self._exact:
            source = self.source(self._exact[reply], [(0, len(reply))])
            return Trace(reply, "verbatim", [source], [], len(words), len(words))
        least = min(MIN_SPAN, len(words))
        runs: dict[int, list[tuple[int, int]]] = {}

        def consider(doc: int) -> None:
            if doc not in runs:
                runs[doc] = _runs(words, self.texts_words(doc), least) if least else []

        ranked = self.closest(words)
        for doc in ranked:
            consider(doc)
        covered = self._covered(runs, len(words))
        for i in range(len(words) - least + 1):
            if least and not all(covered[i : i + least]):
                if least == MIN_SPAN and not self.seen(words[i : i + least]):
                    continue  # in no training reply: new
                # A phrase the closest replies lack: find the training replies that have it.
                for doc in self.containing(words[i : i + least]):
                    consider(doc)
                covered = self._covered(runs, len(words))
        chosen = self._cover(runs, ranked, len(words))
        sources = [self.source(d, [(spans[a][0], spans[b - 1][1]) for a, b in runs[d]])
                   for d in chosen]  # fmt: skip
        sources.sort(key=lambda s: s.spans[0])  # numbered in reading order
        if not sources and ranked:  # nothing shared: still show the nearest reply, with no spans
            sources = [self.source(ranked[0], [])]
        new, i = [], 0
        while i < len(words):
            if covered[i]:
                i += 1
                continue
            j = i
            while j < len(words) and not covered[j]:
                j += 1
            new.append((spans[i][0], spans[j - 1][1]))
            i = j
        seen = sum(covered)
        kind = "recombined" if words and seen == len(words) else "novel"
        return Trace(reply, kind, sources, new, len(words), seen)

    def closest(self, words: list[str], k: int = CLOSEST) -> list[int]:
        """Training replies ranked by BM25 against `words`, best first."""
        if not words or not self.bm25.get_tokens_ids(words):
            return []
        k = min(k, len(self.texts))
        docs, scores = self.bm25.retrieve([words], k=k, show_progress=False, n_threads=0)
        return [int(d) for d, s in zip(docs[0], scores[0], strict=True) if s > 0]

    def seen(self, phrase: list[str]) -> bool:
        """True when these MIN_SPAN words occur together, in order, in some training reply."""
        import numpy as np

        h = np.uint64(_hash(phrase))
        at = int(np.searchsorted(self.grams, h))
        return at < len(self.grams) and self.grams[at] == h

    def containing(self, words: list[str], limit: int = 3) -> list[int]:
        """Up to `limit` training replies that contain these words in this order, exactly."""
        import pyarrow.compute as pc

        hits = pc.indices_nonzero(pc.match_substring(self._norm, " " + " ".join(words) + " "))
        return hits.slice(0, limit).to_pylist()

    def continuing(self, before: str, piece: str) -> tuple[int, int] | None:
        """(training reply, character where `piece` ends in it) for a training reply that goes
        on from the end of `before` with `piece`, or None when none does.

        The longest tail of `before` that still matches wins: the whole reply so far, then its
        last three words, then its last word, so the answer is as specific as the data allows.
        """
        import pyarrow.compute as pc

        before, piece = before.casefold(), piece.casefold()
        starts = [m.start() for m in WORD.finditer(before)]
        tails = [0] + [starts[-n] for n in (3, 1) if len(starts) >= n]
        for k, at in enumerate(tails):
            pattern = " " + before[at:] + piece
            found = (pc.starts_with if k == 0 else pc.match_substring)(self._low, pattern)
            hits = pc.indices_nonzero(found)
            if len(hits):
                doc = hits[0].as_py()
                # `_low` is " " + the text, so the pattern found at i ends at i + len - 1 there
                return doc, (" " + self.texts[doc].lower()).find(pattern) + len(pattern) - 1
        return None

    def source(self, doc: int, spans: list[tuple[int, int]]) -> Source:
        row = {
            name: self.table.column(name)[doc].as_py() for name in ("topic", "id", "line", "rows")
        }
        line = row["line"] if row["line"] > 0 else None
        template = self.templates.get(line or 0, {})
        return Source(self.texts[doc], row["topic"], row["id"], self.file, line,
                      template.get("key", ""), template.get("text", ""), row["rows"], spans)  # fmt: skip

    def texts_words(self, doc: int) -> list[str]:
        return self._norm[doc].as_py().split()

    @staticmethod
    def _covered(runs: dict, n: int) -> list[bool]:
        covered = [False] * n
        for found in runs.values():
            for a, b in found:
                covered[a:b] = [True] * (b - a)
        return covered

    @staticmethod
    def _cover(runs: dict, ranked: list[int], n: int) -> list[int]:
        """Sources in the order that covers the most words first (ties: the closer by BM25)."""
        rank = {d: i for i, d in enumerate(ranked)}
        covered, chosen = [False] * n, []
        while len(chosen) < MAX_SOURCES:
            gain = {
                d: sum(not covered[i] for a, b in r for i in range(a, b)) for d, r in runs.items()
            }
            best = max(gain, key=lambda d: (gain[d], -rank.get(d, len(rank))), default=None)
            if best is None or gain[best] == 0:
                return chosen
            chosen.append(best)
            for a, b in runs[best]:
                covered[a:b] = [True] * (b - a)
        return chosen
