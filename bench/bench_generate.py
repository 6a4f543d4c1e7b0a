"""Benchmark `guppyforge generate` on every built-in persona (run by hand, not a test).

    python bench/bench_generate.py            # 60K conversations per persona
    python bench/bench_generate.py -n 10000   # quicker

After the built-ins it runs bench/fixtures/guppy_single_turn.yaml, the guppy file as it was before
follow-ups and turn mixes (single-turn, format 1): the before of every later change to the
sampler, measured by today's code on the same machine in the same run.

For each persona it prints: the whole command's wall time (a fresh `guppyforge generate`
process, imports included), the generation time on one core and conversations per second, the
share of draws that were unique, distinct-1/distinct-2 of the replies, and the speed-up of
`--workers 2` over `--workers 1`, measured in the same run (same machine, same load). Each time
is the best of --repeat runs (default 3); `cpu w2/w1` is the total CPU time of the 2-worker runs
over that of the 1-worker runs (the cost of going parallel, whatever the machine's load).
Targets (DESIGN.md): 60K in <= 5 s of generation on one core (aim 2 s), >= 95 % unique;
the whole command <= 10 s.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from guppyforge.dataset.generate import generate_dataset
from guppyforge.files import builtin_personas

BEFORE = Path(__file__).parent / "fixtures" / "guppy_single_turn.yaml"

COLUMNS = [  # (header, format); each column is as wide as the wider of the two
    ("persona", "{:<17}"),
    ("cmd s", "{:6.2f}"),
    ("gen s", "{:6.2f}"),
    ("conv/s", "{:8,.0f}"),
    ("unique %", "{:8.2f}"),
    ("distinct-1", "{:10.4f}"),
    ("distinct-2", "{:10.4f}"),
    ("gen s w2", "{:8.2f}"),
    ("speed-up w2", "{:11.2f}"),
    ("cpu w2/w1", "{:9.2f}"),
]


def command_seconds(persona: Path, out: Path, n: int, seed: int) -> float:
    """Wall time of the real command in a fresh process: what a user waits for."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "guppyforge.apps.cli", "generate", str(persona), "-n", str(n)]
        + ["--seed", str(seed), "--out", str(out), "--force", "--quiet"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def bench(persona: Path, n: int, seed: int, repeat: int, tmp: Path) -> list:
    """One table row for one persona: each time is the best of `repeat` runs.

    The best, not the mean, because other processes only ever add time; the 1- and 2-worker
    runs alternate so that a burst of load elsewhere hits both alike.
    """
    cmd = min(command_seconds(persona, tmp / "cmd", n, seed) for _ in range(repeat))
    runs: dict[int, list] = {1: [], 2: []}
    cpu: dict[int, float] = {1: 0.0, 2: 0.0}
    for _ in range(repeat):
        for workers, results in runs.items():
            out = tmp / f"w{workers}"
            kwargs = dict(n=n, seed=seed, workers=workers, progress=False, force=True)
            before = _cpu_seconds()
            results.append(generate_dataset(persona, out, **kwargs))
            cpu[workers] += _cpu_seconds() - before
    one, two = (min(results, key=lambda r: r.generation_seconds) for results in runs.values())
    assert one.fingerprint == two.fingerprint, "workers=2 changed the data"
    div = one.stats["diversity"]
    return [
        persona.stem,
        cmd,
        one.generation_seconds,
        one.rows / one.generation_seconds,
        one.unique_pct,
        div["distinct_1"],
        div["distinct_2"],
        two.generation_seconds,
        one.generation_seconds / two.generation_seconds,
        cpu[2] / cpu[1],
    ]


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the worker processes).

    Next to the wall-clock speed-up it tells what 2 workers cost in total: on a machine whose
    other users leave no core free, the wall clock cannot improve, but this ratio still shows
    how much work the parallel path adds.
    """
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=60_000, help="conversations per persona")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best counts")
    parser.add_argument("personas", nargs="*", type=Path, help="default: every built-in persona")
    args = parser.parse_args()
    personas = args.personas or [*builtin_personas(), BEFORE]

    # Timings on a shared machine mean little without the load they were taken under.
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"generate benchmark: n={args.n:,}, seed={args.seed}, {os.cpu_count()} cores, load {load}"
    )
    widths = [max(len(name), len(fmt.format(0))) for name, fmt in COLUMNS]
    print(_line([name for name, _ in COLUMNS], widths))
    with tempfile.TemporaryDirectory() as tmp:
        for persona in personas:
            row = bench(persona, args.n, args.seed, args.repeat, Path(tmp))
            print(_line([fmt.format(v) for (_, fmt), v in zip(COLUMNS, row, strict=True)], widths))


def _line(cells: list[str], widths: list[int]) -> str:
    """One table line: the persona name left-aligned, the figures right-aligned."""
    first, *rest = zip(cells, widths, strict=True)
    return "  ".join([first[0].ljust(first[1])] + [c.rjust(w) for c, w in rest])


if __name__ == "__main__":
    main()
