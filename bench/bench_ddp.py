"""Training across processes on one machine: `train --nproc N` against one process, same cores.

    python bench/bench_ddp.py                         # tiny preset, fp32, 2 processes, guppy data
    python bench/bench_ddp.py --preset guppy-9m --nproc 2 --steps 200 --rounds 3

Both train the same global batch (one process: N x --rows rows; N processes: --rows each) for the
same steps, from the same data folder, in fp32, one after the other in turns (one, N, one, N, ...)
so that a machine busy with other work slows them alike. tokens/s is each run's own figure
(config.json: conversation tokens of the training steps per second, evals excluded); the ratio
is N processes' tokens/s over one process's, per round and their median. On a 2-core CPU a
ratio below 1 is expected: one process already uses both cores, and DDP adds an all-reduce.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def train(data: Path, out: Path, preset: str, rows: int, steps: int, nproc: int) -> float:
    command = [sys.executable, "-m", "guppyforge", "train", str(data), "--out", str(out), "-q"]
    command += ["--preset", preset, "--batch-size", str(rows), "--max-steps", str(steps)]
    command += ["--eval-every", str(steps), "--precision", "fp32"]
    command += ["--nproc", str(nproc)] if nproc > 1 else []
    subprocess.run(command, check=True, capture_output=True)
    return json.loads((out / "config.json").read_text())["results"]["tokens_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, help="A dataset folder (default: generate guppy, 6,000)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--rows", type=int, default=8, help="Rows per process per step.")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "data"
            subprocess.run(
                [sys.executable, "-m", "guppyforge", "generate", "guppy", "--out", str(data)]
                + ["-n", "6000"],
                check=True,
                capture_output=True,
            )
        ratios = []
        for r in range(args.rounds):
            one = train(
                data, Path(tmp) / f"one{r}", args.preset, args.nproc * args.rows, args.steps, 1
            )
            many = train(
                data, Path(tmp) / f"many{r}", args.preset, args.rows, args.steps, args.nproc
            )
            ratios.append(many / one)
            print(
                f"round {r + 1}: 1 process {one:,} tokens/s, {args.nproc} processes {many:,}: "
                f"x{many / one:.2f}",
                flush=True,
            )
        print(f"median ratio ({args.nproc} processes / 1): x{statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
