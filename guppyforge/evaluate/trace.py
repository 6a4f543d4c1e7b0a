"""`guppyforge why`: where a reply came from, traced back to the persona lines that taught it.

Read in this order: the trace index (word n-grams of the training replies, each tagged with the
persona line that wrote it) and the matching; then how a run's index is built from its training
data on first use and cached in RUN/trace/.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from guppyforge.errors import GuppyError
from guppyforge.model.run import dataset_dir

# --- `guppyforge why`: where a reply came from, traced back to the persona lines that taught it.
#
# Every training row records the templates that made it (`food/ask2@L102/say4@L110`), so each
# training reply points at a line of persona.yaml. To trace a reply the model wrote:
#
# 1. verbatim: is the exact reply one of the training replies?
# 2. closest: BM25 (the `bm25s` library) ranks the training replies that share its words;
# 3. spans: each candidate covers the stretches of the reply that it contains word for word
#    (at least MIN_SPAN words). A phrase that no candidate covers is checked against the hashes of
#    every MIN_SPAN-word phrase in training (a sorted numpy array): unseen, it is new; seen, the
#    replies holding it are found by exact substring search (pyarrow), and join the candidates.
#    So "new" means in no training reply at all, not merely in none of the closest ones.
#
# A reply is then `verbatim`, `recombined` (every span seen in training, never all together) or
# `novel` (some words are in no training reply). The index is built on first use and cached in
# RUN/trace/, keyed by the dataset's fingerprint and persona, so an edited dataset is re-indexed.

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
# A row read from a file: chat data of one's own (`qa.csv#12`) or a persona's examples_file
# (`examples/3@hand.jsonl#12`), the path relative to the dataset (or to its persona).
ROW_TAG = re.compile(r"^(?:examples/\d+@)?(?P<file>[^@#]+)#(?P<row>\d+)$")


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
    row: int | None = None  # the row of `file` (counting from 1) for a row read from a data file

    @property
    def where(self) -> str:
        if self.row:
            return f"{self.file}: row {self.row}"
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
        self.rows_base = Path(meta.get("rows_base") or ".")  # where a `file#row` id's file is

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
        sources = [
            self.source(d, [(spans[a][0], spans[b - 1][1]) for a, b in runs[d]]) for d in chosen
        ]
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
        file, from_file = self.file, ROW_TAG.match(row["id"] or "")
        if from_file and not line:
            file = str(self.rows_base / from_file["file"])
        return Source(
            self.texts[doc],
            row["topic"],
            row["id"],
            file,
            line,
            template.get("key", ""),
            template.get("text", ""),
            row["rows"],
            spans,
            int(from_file["row"]) if from_file and not line else None,
        )

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


# --- The trace index of a run: built from its training data on first use, cached in RUN/trace/.
#
# RUN/trace/replies.arrow     each distinct training reply: text, words, topic, template id,
#                                 the persona line that made it, how many rows have it
#     RUN/trace/bm25/             the bm25s index over those replies
#     RUN/trace/phrases.npy       the sorted hashes of every 3-word phrase in them
#     RUN/trace/meta.json         the dataset key, the persona file, the template behind each line
#
# Why lazily and not at the end of `train`: the trainer's layer may not import the applications
# layer, most runs are never traced, and a run trained before this existed gets an index too. The
# key is the dataset's content fingerprint (stats.json) or, without one, the hash of its data
# files' bytes (a single file of chat data too: size and time can survive an edit), plus the
# persona's hash and that of its examples_file: regenerate or edit the data and the next `why`
# re-indexes it. The cache is whole or absent (built aside, renamed into place), and
# self-contained: `why` still answers after the dataset folder was moved away.

CACHE = "trace"


def dataset_key(data_dir: Path) -> str:
    """What the cached index must have been built from: content fingerprint and persona hash."""
    from guppyforge.dataset.formats import data_files
    from guppyforge.persona.chat_rows import examples_file_of

    data_dir = Path(data_dir)
    parts = [f"v{INDEX_VERSION}"]
    try:
        parts.append(json.loads((data_dir / "stats.json").read_text())["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        files = sorted((data_dir / "data").glob("train-*.parquet")) if data_dir.is_dir() else []
        if not files:  # chat data of one's own: a file, or a folder of them
            with contextlib.suppress(GuppyError, OSError):
                files = data_files(data_dir)
        for f in files:
            if f.is_file():  # not a FIFO: reading one may never end (the data's reader refuses it)
                with f.open("rb") as data:
                    parts.append(f"{f}:{hashlib.file_digest(data, 'sha256').hexdigest()}")
    persona = data_dir / "persona.yaml"
    if persona.is_file():
        parts.append(hashlib.sha256(persona.read_bytes()).hexdigest())
        with contextlib.suppress(OSError):  # its examples_file, as it is now
            if found := examples_file_of(persona):
                parts.append(hashlib.sha256(found[1].read_bytes()).hexdigest())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _templates(persona_path: Path, lines: set[int]) -> dict[int, dict]:
    """The template behind each line: from the loaded persona, else the line as written."""
    from guppyforge.persona.schema import load_persona

    found: dict[int, dict] = {}
    with contextlib.suppress(GuppyError, OSError):  # a persona this version cannot read: raw lines
        p = load_persona(persona_path)
        for t in p.topics.values():
            for tpl in (*t.say, *(x for f in t.follow_ups for x in f.say)):
                found[tpl.line] = {"text": tpl.text, "key": tpl.key}
        for i, ex in enumerate(p.examples):
            if ex.file:
                continue  # a row of the examples_file: its id names the file and the row
            found[ex.line] = {"text": " / ".join(a for _, a in ex.turns), "key": f"examples[{i}]"}
    with contextlib.suppress(OSError):
        raw = persona_path.read_text(encoding="utf-8").splitlines()
        for n in lines - found.keys():
            if 0 < n <= len(raw):
                found[n] = {"text": raw[n - 1].strip().removeprefix("- ").strip(), "key": ""}
    return {n: found[n] for n in lines if n in found}


def build_index(
    data_dir: Path, persona_in_run: bool = False, fmt: str | None = None, context: int | None = None
) -> TraceIndex:
    """Index the distinct replies of `data_dir`'s train split (what the model learned from).

    `fmt` and `context`: how train read chat data of one's own, so the split is the same one."""
    import bm25s
    import pyarrow as pa

    started = time.perf_counter()
    table = _train_table(Path(data_dir), fmt, context)
    n = table.num_rows
    ids = (
        table.column("template_id").to_pylist() if "template_id" in table.column_names else [""] * n
    )
    topics = table.column("topic").to_pylist() if "topic" in table.column_names else [""] * n
    first: dict[str, int] = {}
    out = {"text": [], "norm": [], "low": [], "topic": [], "id": [], "line": [], "rows": []}
    last, k = -1, 0
    for r, text in zip(*_assistant_messages(table), strict=True):
        k = k + 1 if r == last else 0  # the k-th reply of row r was made by its k-th say tag
        last = r
        if text in first:
            out["rows"][first[text]] += 1
            continue
        first[text] = len(out["text"])
        tid = ids[r] or ""
        says, example = SAY_TAG.findall(tid), EXAMPLE_TAG.match(tid)
        line = int(says[k][1]) if k < len(says) else int(example[1]) if example else 0
        out["text"].append(text)
        out["norm"].append(" " + " ".join(words(text)) + " ")
        out["low"].append(" " + text.lower())
        out["topic"].append(topics[r] or "")
        out["id"].append(tid)
        out["line"].append(line)
        out["rows"].append(1)
    if not out["text"]:
        raise GuppyError(f"{data_dir}: the train split has no assistant replies to trace.")
    bm25 = bm25s.BM25()
    bm25.index([n.split() or [""] for n in out["norm"]], show_progress=False)
    meta = {
        "version": INDEX_VERSION,
        "key": dataset_key(data_dir),
        "dataset": str(Path(data_dir).resolve()),
        "persona_in_run": persona_in_run,
        "persona_file": str(Path(data_dir).resolve() / "persona.yaml"),
        "rows_base": str(_rows_base(Path(data_dir))),
        "templates": _templates(Path(data_dir) / "persona.yaml", set(out["line"]) - {0}),
        "replies": len(out["text"]),
        "rows": n,
    }
    meta["build_seconds"] = round(time.perf_counter() - started, 3)
    return TraceIndex(pa.table(out), bm25, meta)


def _rows_base(data_dir: Path) -> Path:
    """The folder a row's `file#row` id is relative to: the data's folder (the persona's, for
    an examples_file row), or the folder of a single file of chat data."""
    return data_dir.resolve() if data_dir.is_dir() else data_dir.resolve().parent


def _train_table(data_dir: Path, fmt: str | None = None, context: int | None = None):
    """The train split as an Arrow table. generate's parquet files are read with pyarrow alone
    (seconds faster than importing `datasets`); any other layout goes through `load_splits`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((data_dir / "data").glob("train-*.parquet")) if data_dir.is_dir() else []
    if files and not fmt:
        return pa.concat_tables([pq.read_table(f) for f in files]).combine_chunks()
    from guppyforge.dataset.folder import load_splits

    splits = load_splits(data_dir, fmt, context, say=lambda _: None)
    return splits["train"].with_format("arrow")[:]


def _assistant_messages(table) -> tuple[list[int], list[str]]:
    """(row, stripped text) of every assistant message, in order, without a Python loop over
    the nested rows (Arrow flattens the list of {role, content} structs in one pass)."""
    import pyarrow.compute as pc

    messages = table.column("messages").combine_chunks()
    flat = pc.list_flatten(messages)
    mine = pc.equal(flat.field("role"), "assistant")
    rows = pc.list_parent_indices(messages).filter(mine)
    texts = pc.utf8_trim_whitespace(flat.field("content").filter(mine))
    return rows.to_pylist(), texts.to_pylist()


def save_index(index: TraceIndex, folder: Path) -> None:
    """Write the index as a folder, whole or not at all (built aside, then renamed into place)."""
    import numpy as np
    import pyarrow as pa

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        small = pa.ipc.IpcWriteOptions(compression="zstd")  # the text columns shrink ~5x
        with (
            pa.OSFile(str(tmp / "replies.arrow"), "wb") as f,
            pa.ipc.new_file(f, index.table.schema, options=small) as w,
        ):
            w.write_table(index.table)
        index.bm25.save(str(tmp / "bm25"), show_progress=False)
        np.save(tmp / "phrases.npy", index.grams)
        (tmp / "meta.json").write_text(json.dumps(index.meta, indent=1, ensure_ascii=False) + "\n")
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}-{threading.get_ident()}")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_index(folder: Path) -> TraceIndex | None:
    """The cached index in `folder`, or None when there is none this version can read."""
    import bm25s
    import numpy as np
    import pyarrow as pa

    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        if meta.get("version") != INDEX_VERSION:
            return None
        # Arrow's own file format: no parsing, and no pandas (which reading parquet through
        # pyarrow.dataset imports, a second or more before the first answer).
        table = pa.ipc.open_file(pa.memory_map(str(folder / "replies.arrow"))).read_all()
        bm25 = bm25s.BM25.load(str(folder / "bm25"), mmap=True, show_progress=False)
        grams = np.load(folder / "phrases.npy", mmap_mode="r")
    except Exception:  # missing, half-copied or foreign: build it again
        return None
    return TraceIndex(table, bm25, meta, grams)


def load_index(
    run_dir: str | Path, data: str | Path | None = None, note=print, data_format: str | None = None
) -> TraceIndex:
    """The run's trace index: the cached one when it matches the dataset, else a fresh one.

    With `data` (another dataset than the run's), the index is built and not cached;
    `data_format` forces its shape, as `train --format` does. `note` hears one line when an
    index is being built (it takes a few seconds on 60K rows).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise GuppyError(
            f"{run_dir / 'config.json'}: missing. Is {run_dir} a run folder "
            "written by `guppyforge train`?"
        )
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    cached = read_index(run_dir / CACHE) if data is None else None
    recorded = Path((config.get("dataset") or {}).get("path") or run_dir / "no-dataset")
    if cached is not None and (
        not recorded.exists() or cached.meta["key"] == dataset_key(recorded)
    ):
        return _cite(cached, run_dir)  # fresh, or the dataset is gone and the cache is all we have
    data_dir = dataset_dir(run_dir, config, data)
    note(f"(indexing the training replies of {data_dir} for tracing, once)")
    in_run = _same_file(run_dir / "persona.yaml", data_dir / "persona.yaml")
    fmt = data_format or ((config.get("dataset") or {}).get("format") if data is None else None)
    context = (config.get("model") or {}).get("context")
    index = build_index(data_dir, persona_in_run=in_run, fmt=fmt, context=context)
    if data is None:
        with contextlib.suppress(OSError):  # a read-only run folder: trace without a cache
            save_index(index, run_dir / CACHE)
    return _cite(index, run_dir)


def _same_file(a: Path, b: Path) -> bool:
    return a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()


def _cite(index: TraceIndex, run_dir: Path) -> TraceIndex:
    """Name the run's own persona.yaml when it is the data's, byte for byte: it travels with it."""
    if index.meta.get("persona_in_run"):
        index.file = str(run_dir / "persona.yaml")
        index.rows_base = run_dir  # its examples_file travels with it too
    return index


def why(
    run_dir: str | Path,
    reply: str,
    data: str | Path | None = None,
    note=print,
    data_format: str | None = None,
) -> Trace:
    """Trace one reply back to the training replies and persona lines it came from."""
    return load_index(run_dir, data, note, data_format).trace(reply)


_LOADED: dict[str, TraceIndex] = {}
_LOCK = threading.Lock()


def trace_json(run_dir: str | Path, reply: str) -> dict:
    """The trace of `reply` as plain JSON, for a server response (`"trace": true`).

    The run's index is loaded once per process and kept; the first call may build it.
    """
    key = str(Path(run_dir).resolve())
    with _LOCK:
        try:
            if key not in _LOADED:
                _LOADED[key] = load_index(run_dir, note=lambda _: None)
        except GuppyError as e:  # no dataset, no cache: the reply still goes out, with the reason
            return {"error": str(e)}
        index = _LOADED[key]
    return index.trace(reply).to_dict()
