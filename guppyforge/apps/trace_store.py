"""The trace index of a run: built from its training data on first use, cached in RUN/trace/.

    RUN/trace/replies.arrow     each distinct training reply: text, words, topic, template id,
                                the persona line that made it, how many rows have it
    RUN/trace/bm25/             the bm25s index over those replies
    RUN/trace/phrases.npy       the sorted hashes of every 3-word phrase in them
    RUN/trace/meta.json         the dataset key, the persona file, the template behind each line

Why lazily and not at the end of `train`: the trainer's layer may not import the applications
layer, most runs are never traced, and a run trained before this existed gets an index too. The
key is the dataset's content fingerprint (stats.json) or, without one, its parquet files' sizes
and times, plus the persona's hash: regenerate the data and the next `why` re-indexes it. The
cache is whole or absent (built aside, renamed into place), and self-contained: `why` still
answers after the dataset folder was moved away.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path

from guppyforge.apps.trace import EXAMPLE_TAG, INDEX_VERSION, SAY_TAG, Trace, TraceIndex, words
from guppyforge.errors import GuppyError
from guppyforge.model.run import dataset_dir

CACHE = "trace"


def dataset_key(data_dir: Path) -> str:
    """What the cached index must have been built from: content fingerprint and persona hash."""
    parts = [f"v{INDEX_VERSION}"]
    try:
        parts.append(json.loads((data_dir / "stats.json").read_text())["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        for f in sorted((data_dir / "data").glob("train-*.parquet")):
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    persona = data_dir / "persona.yaml"
    if persona.is_file():
        parts.append(hashlib.sha256(persona.read_bytes()).hexdigest())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _templates(persona_path: Path, lines: set[int]) -> dict[int, dict]:
    """The template behind each line: from the loaded persona, else the line as written."""
    from guppyforge.persona.load import load_persona

    found: dict[int, dict] = {}
    with contextlib.suppress(GuppyError, OSError):  # a persona this version cannot read: raw lines
        p = load_persona(persona_path)
        for t in p.topics.values():
            for tpl in (*t.say, *(x for f in t.follow_ups for x in f.say)):
                found[tpl.line] = {"text": tpl.text, "key": tpl.key}
        for i, ex in enumerate(p.examples):
            found[ex.line] = {"text": " / ".join(a for _, a in ex.turns), "key": f"examples[{i}]"}
    with contextlib.suppress(OSError):
        raw = persona_path.read_text(encoding="utf-8").splitlines()
        for n in lines - found.keys():
            if 0 < n <= len(raw):
                found[n] = {"text": raw[n - 1].strip().removeprefix("- ").strip(), "key": ""}
    return {n: found[n] for n in lines if n in found}


def build_index(data_dir: Path, persona_in_run: bool = False) -> TraceIndex:
    """Index the distinct replies of `data_dir`'s train split (what the model learned from)."""
    import bm25s
    import pyarrow as pa

    started = time.perf_counter()
    table = _train_table(Path(data_dir))
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
        "templates": _templates(Path(data_dir) / "persona.yaml", set(out["line"]) - {0}),
        "replies": len(out["text"]),
        "rows": n,
    }
    meta["build_seconds"] = round(time.perf_counter() - started, 3)
    return TraceIndex(pa.table(out), bm25, meta)


def _train_table(data_dir: Path):
    """The train split as an Arrow table. generate's parquet files are read with pyarrow alone
    (seconds faster than importing `datasets`); any other layout goes through `load_splits`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((data_dir / "data").glob("train-*.parquet"))
    if files:
        return pa.concat_tables([pq.read_table(f) for f in files]).combine_chunks()
    from guppyforge.dataset.read import load_splits

    return load_splits(data_dir)["train"].with_format("arrow")[:]


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


def load_index(run_dir: str | Path, data: str | Path | None = None, note=print) -> TraceIndex:
    """The run's trace index: the cached one when it matches the dataset, else a fresh one.

    With `data` (another dataset than the run's), the index is built and not cached. `note`
    hears one line when an index is being built (it takes a few seconds on 60K rows).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise GuppyError(f"{run_dir / 'config.json'}: missing. Is {run_dir} a run folder "
                         "written by `guppyforge train`?")  # fmt: skip
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    cached = read_index(run_dir / CACHE) if data is None else None
    recorded = Path((config.get("dataset") or {}).get("path") or run_dir / "no-dataset")
    if cached is not None and (
        not recorded.is_dir() or cached.meta["key"] == dataset_key(recorded)
    ):
        return _cite(cached, run_dir)  # fresh, or the dataset is gone and the cache is all we have
    data_dir = dataset_dir(run_dir, config, data)
    note(f"(indexing the training replies of {data_dir} for tracing, once)")
    in_run = _same_file(run_dir / "persona.yaml", data_dir / "persona.yaml")
    index = build_index(data_dir, persona_in_run=in_run)
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
    return index


def why(run_dir: str | Path, reply: str, data: str | Path | None = None, note=print) -> Trace:
    """Trace one reply back to the training replies and persona lines it came from."""
    return load_index(run_dir, data, note).trace(reply)


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
