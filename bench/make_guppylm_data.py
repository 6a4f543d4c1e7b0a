"""GuppyLM-shaped data from the guppy persona, and one run on it beside generate's own folder.

    python bench/make_guppylm_data.py --out /tmp/guppylm                  # the data only
    python bench/make_guppylm_data.py --out /tmp/guppylm --compare 5      # + the side by side

Writes OUT/guppylm/train.jsonl and eval.jsonl in GuppyLM's format, one {"input", "output",
"category"} object a line, made by `generate` from the built-in guppy persona (60,000 single-turn
rows, seed 42, generate's leak-free split kept as the two files; no download). The generate
folder the rows came from is kept as OUT/generated; its few multi-turn rows (the persona's
two-turn examples) have no GuppyLM form and are left out of the JSONL, and said so.

`--compare MINUTES` then trains on each (train's defaults, --max-minutes MINUTES, fp32 on the
CPU) and runs eval on both with the guppy persona's probes, printing one row each: steps, eval
loss on the test split, the own / perturbed / blind / off-topic pass rates. The rows are the
same and so is the split, so the two differ only in how the data reached train: GuppyLM's
columns (categories as topics) against generate's parquet folder. The budget is wall time: a
busy machine means fewer steps, for both.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import pyarrow.parquet as pq

from guppyforge.dataset.generate import generate_dataset
from guppyforge.evaluate.score import evaluate_run
from guppyforge.files import builtin_persona
from guppyforge.train.loop import train

COLUMNS = ("data", "steps", "eval loss", "own", "perturbed", "blind", "off-topic", "wall s")


def write_guppylm(generated: Path, out: Path) -> tuple[dict[str, int], int]:
    """generate's splits as GuppyLM's JSONL files (train.jsonl, eval.jsonl): rows per file,
    and the multi-turn rows left out (the persona's hand-written examples of two turns: GuppyLM's
    format holds one exchange a row)."""
    counts, left_out = {}, 0
    for split, name in (("train", "train.jsonl"), ("test", "eval.jsonl")):
        rows = pq.read_table(generated / "data" / f"{split}-00000-of-00001.parquet").to_pylist()
        counts[name] = 0
        with (out / name).open("w", encoding="utf-8") as f:
            for r in rows:
                if len(r["messages"]) != 2:
                    left_out += 1
                    continue
                user, reply = (m["content"] for m in r["messages"])
                line = {"input": user, "output": reply, "category": r["topic"]}
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
                counts[name] += 1
    return counts, left_out


def _steps(run: Path) -> int:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return max((json.loads(line).get("step", 0) for line in lines), default=0)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder to write")
    ap.add_argument("-n", type=int, default=60_000, help="rows")
    ap.add_argument("--seed", type=int, default=42, help="generate's seed")
    ap.add_argument("--compare", type=float, metavar="MINUTES", help="train and eval both")
    ap.add_argument("--samples", type=int, default=5, help="eval: replies per probe")
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    generated = out / "generated"
    warnings.simplefilter("ignore")  # generate's data warnings are validate's business here
    gen = generate_dataset(builtin_persona("guppy"), generated, n=args.n, seed=args.seed,
                           turns=1, force=True, progress=False)  # fmt: skip
    shaped = out / "guppylm"  # a folder of its own: train reads every data file in a folder
    shaped.mkdir(exist_ok=True)
    counts, left_out = write_guppylm(generated, shaped)
    print(f"# {gen.summary()}")
    written = ", ".join(f"{shaped / k}: {v:,} rows" for k, v in counts.items())
    print(f"# wrote {written}; {left_out} multi-turn rows left out")
    if args.compare is None:
        return
    print(f"# {os.cpu_count()} cores visible; train's defaults, {args.compare:g} min, fp32")
    print(" | ".join(COLUMNS))
    persona = builtin_persona("guppy")
    for label, data in (("generate folder", generated), ("guppylm jsonl", shaped)):
        run = out / f"run-{label.split()[0]}"
        started = time.perf_counter()
        train(data, run, force=True, progress=False, max_minutes=args.compare,
              precision="fp32", device="cpu")  # fmt: skip
        r = evaluate_run(run, persona=persona, samples=args.samples, device="cpu")
        row = (label, str(_steps(run)), f"{r['test_loss']:.3f}", _pct(r["probe_pass_rate"]),
               _pct(r["perturbed_pass_rate"]), _pct(r["blind_pass_rate"]),
               _pct(r["offtopic_pass_rate"]), f"{time.perf_counter() - started:.0f}")  # fmt: skip
        print(" | ".join(row), flush=True)
        (run / "eval.json").write_text(json.dumps(r, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
