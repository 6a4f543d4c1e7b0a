"""A sweep's wall time on Ray against the same jobs run one by one, on this machine.

    python bench/bench_sweep.py                       # cat, guppy x seeds 0, 1; micro, 60 steps
    python bench/bench_sweep.py --preset tiny --steps 200 --cpus 2

Both run the same jobs from the same generated datasets: first `run_sweep` on a local Ray with
--cpus cores (one per job, so --cpus jobs at a time; Ray's start counted), then each job alone,
one after another, in this process with all --cpus cores (`run_job`, what each Ray task runs).
Small jobs are the case a sweep is for on a laptop: several runs that each use a core badly.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from guppyforge.apps.sweep import Grid, plan, run_job, run_sweep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--persona", action="append", default=None)
    ap.add_argument("--preset", default="micro")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("-n", type=int, default=2000)
    args = ap.parse_args()
    grid = Grid(
        personas=args.persona or ["cat", "guppy"],
        presets=[args.preset],
        seeds=list(range(args.seeds)),
        conversations=args.n,
        train={"max_steps": args.steps},
    )
    with tempfile.TemporaryDirectory() as tmp:
        t = time.monotonic()
        run_sweep(grid, Path(tmp) / "ray", cpus=args.cpus, say=lambda _: None)
        on_ray = time.monotonic() - t
        alone = replace(grid, cpus_per_job=args.cpus)
        t = time.monotonic()
        for job in plan(grid):
            out = Path(tmp) / "ray"  # the datasets the sweep generated; new run folders
            data, run = out / "data" / job.name, Path(tmp) / "one" / job.id
            run_job(job, str(data), str(run), str(Path(tmp) / f"{job.id}.log"), alone, False)
        one_by_one = time.monotonic() - t
    jobs = len(plan(grid))
    print(f"{jobs} jobs ({args.preset}, {args.steps} steps, eval included), {args.cpus} cores:")
    print(f"  Ray sweep, {args.cpus} at a time: {on_ray:.0f} s (datasets and Ray's start included)")
    print(f"  one by one, {args.cpus} threads each: {one_by_one:.0f} s")
    print(f"  sweep / one by one: x{one_by_one / on_ray:.2f} faster")


if __name__ == "__main__":
    main()
