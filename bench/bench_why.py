"""`guppyforge why` on a 60K-row dataset: index build time, size on disk, load and query times.

    python bench/bench_why.py                  # generates guppy -n 60000 in a temp folder
    python bench/bench_why.py data/guppy       # an existing dataset folder

No model is needed: `why` reads the training data and the persona, never the weights, so the run
folder here is only config.json (pointing at the data) and persona.yaml. Queries are 100 replies
of the test split, 50 stitched from two of them (first half + second half) and 50 with a made-up
tail; each is timed alone, the index already loaded (as in the REPL, eval and serve).
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from guppyforge.dataset.generate import generate_dataset
from guppyforge.evaluate.trace import build_index, load_index, read_index, save_index


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-why-"))
    try:
        data = Path(sys.argv[1]) if len(sys.argv) > 1 else tmp / "data"
        if len(sys.argv) == 1:
            generate_dataset("guppy", data, n=60_000, progress=False)
        run = tmp / "run"
        run.mkdir()
        shutil.copy(data / "persona.yaml", run / "persona.yaml")
        (run / "config.json").write_text(json.dumps({"dataset": {"path": str(data.resolve())}}))

        started = time.perf_counter()
        index = build_index(data, persona_in_run=True)
        build = time.perf_counter() - started
        save_index(index, run / "trace")
        size = sum(f.stat().st_size for f in (run / "trace").rglob("*") if f.is_file())
        started = time.perf_counter()
        read_index(run / "trace")
        load = time.perf_counter() - started
        started = time.perf_counter()
        index = load_index(run, note=lambda _: None)  # with the dataset-key check
        load_checked = time.perf_counter() - started

        rows = pq.read_table(next((data / "data").glob("test-*.parquet"))).to_pylist()
        replies = [r["messages"][1]["content"] for r in random.Random(0).sample(rows, 100)]
        stitched = []
        for a, b in zip(replies[:50], replies[50:], strict=True):
            wa, wb = a.split(), b.split()
            stitched.append(" ".join(wa[: len(wa) // 2] + wb[len(wb) // 2 :]))
        tail = "the zebra plays jazz on mondays with a purple kettle"
        made_up = [" ".join(r.split()[:5] + [tail]) for r in replies[:50]]

        print(f"{index.meta['rows']:,} train rows, {index.meta['replies']:,} distinct replies")
        print(f"build {build:.2f} s, on disk {size / 1e6:.2f} MB, "
              f"load {load * 1000:.0f} ms ({load_checked * 1000:.0f} ms with the key check)")  # fmt: skip
        for name, group in (
            ("test replies", replies),
            ("stitched", stitched),
            ("made-up tail", made_up),
        ):
            times, kinds = [], {}
            for reply in group:
                started = time.perf_counter()
                kind = index.trace(reply).kind
                times.append(time.perf_counter() - started)
                kinds[kind] = kinds.get(kind, 0) + 1
            times.sort()
            print(f"{name:13} n={len(group):3}  median {statistics.median(times) * 1000:5.1f} ms  "
                  f"p90 {times[int(len(times) * 0.9)] * 1000:5.1f} ms  "
                  f"max {times[-1] * 1000:5.1f} ms  {kinds}")  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
