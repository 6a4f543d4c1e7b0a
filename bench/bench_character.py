"""Does the character hold on what nobody wrote down? Train, then score four pass rates.

    python bench/bench_character.py --persona guppy --minutes 5 --preset tiny
    python bench/bench_character.py --persona guppy cat lighthouse --minutes 5
    python bench/bench_character.py --persona guppy cat --minutes 4 --preset tiny \
        --probes bench/fixtures/dev_probes      # each persona's own dev set, by name
    python bench/bench_character.py --persona guppy --minutes 2 5 10 20 --preset tiny guppy-9m
    python bench/bench_character.py --persona guppy --minutes 0.2 --preset micro --rows 2000 \
        --samples 1 --offtopic-samples 5          # a micro run: proves the bench works
    python bench/bench_character.py --persona bench/fixtures/newcomers/vacuum.yaml \
        --steps 2722 --preset tiny --probes bench/fixtures/newcomers/blind/vacuum.yaml
                                                  # fixed steps: the same run on busy cores

For every (persona, preset, minutes) it generates the persona's dataset with generate's defaults
(60,000 rows, variation and off-topic rows as the persona sets them; once per persona), trains
with train's defaults for that budget at --precision fp32 (the schedule fitted to the budget, as
`train --max-minutes` does), and runs eval, printing one row per run:

    own        the persona's own probes (`eval`'s probe pass rate)
    perturbed  the same probes typed with typos, casing and fillers
    blind      the blind probe set (personas/blind/NAME.yaml, or --probes); - when none
    off-topic  held-out off-topic prompts (never in the data) answered in character
    eval loss  loss on the test split's replies
    coverage   the stranger bank's held-out share the persona's data answers (`coverage`)

`--steps N` trains N steps instead of a budget (what `--minutes` bought on a quiet machine): on
shared cores a budget buys fewer steps, N steps give the same model however busy the machine.

`--preset` omitted lets `train` pick its default shape. Targets (issue: the character holds): a
5-minute guppy on 2 fp32 cores passes >= 85 % blind, >= 85 % perturbed, >= 90 % own and >= 90 %
of 50 off-topic prompts. Run it on a quiet machine: the trainer's budget is wall time, so other
load on the cores means fewer steps. --json writes every eval result for later study.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from guppyforge.dataset.coverage import coverage
from guppyforge.dataset.generate import generate_dataset
from guppyforge.evaluate.score import evaluate_run
from guppyforge.train.loop import train

COLUMNS = ("persona", "preset", "min", "steps", "eval loss", "own", "perturbed", "blind",
           "off-topic", "coverage", "wall s")  # fmt: skip


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _steps(run: Path) -> int:
    """The last step metrics.jsonl recorded (0 if none)."""
    step = 0
    path = run / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else ():
        try:
            step = max(step, int(json.loads(line).get("step", 0)))
        except (ValueError, AttributeError):
            continue  # a line cut short
    return step


def probe_files(personas: list[str], given: list[str] | None) -> list[Path | None]:
    """Each persona's blind probe file: `given` in order, or NAME.yaml from a folder."""
    if not given:
        return [None] * len(personas)
    if len(given) == 1 and Path(given[0]).is_dir():
        files = [Path(given[0]) / f"{Path(p).stem}.yaml" for p in personas]
    elif len(given) == len(personas):
        files = [Path(g) for g in given]
    else:
        raise SystemExit(f"--probes: {len(given)} files for {len(personas)} personas. Give one "
                         "per persona, in order, or a folder holding NAME.yaml for each")  # fmt: skip
    for f in files:
        if not f.is_file():
            raise SystemExit(f"--probes: no probe file {f}")
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persona", nargs="+", default=["guppy"], help="built-in names or files")
    ap.add_argument("--minutes", nargs="+", type=float, default=[5.0], help="training budgets")
    ap.add_argument("--steps", type=int, help="train this many steps instead of --minutes")
    ap.add_argument("--preset", nargs="+", default=[None], help="model shapes (default: train's)")
    ap.add_argument("--rows", type=int, default=60_000, help="conversations generated")
    ap.add_argument("--seed", type=int, default=42, help="generate's seed (train and eval: 0)")
    ap.add_argument("--samples", type=int, default=5, help="replies per probe")
    ap.add_argument("--offtopic-samples", type=int, default=50, help="held-out off-topic prompts")
    ap.add_argument(
        "--probes",
        nargs="+",
        help="blind probe files, one per --persona in order, or "
        "a folder holding NAME.yaml for each (default: each built-in's own, if any)",
    )
    ap.add_argument("--work", help="folder for datasets and runs (default: a temporary one)")
    ap.add_argument("--json", help="write every eval result to this file")
    args = ap.parse_args()

    probes = probe_files(args.persona, args.probes)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-character-"))
    print(f"# {os.cpu_count()} cores visible, torch threads as torch picks; work in {work}")
    print(" | ".join(COLUMNS))
    results = []
    for persona, probe_file in zip(args.persona, probes, strict=True):
        data = work / f"data-{Path(persona).stem}"
        gen = generate_dataset(persona, data, n=args.rows, seed=args.seed, force=True,
                               progress=False)  # fmt: skip
        covered = coverage(persona).heldout
        if probe_file is not None:
            print(f"# {persona}: the blind column scores {probe_file}")
        print(f"# {persona}: {gen.summary()}; varied {gen.stats['varied_rows']:,}, "
              f"off-topic {gen.stats['offtopic_rows']:,}")  # fmt: skip
        for preset in args.preset:
            for minutes in args.minutes:
                run = work / f"run-{Path(persona).stem}-{preset or 'default'}-{minutes:g}"
                started = time.perf_counter()
                options = {"max_minutes": minutes, "precision": "fp32", "device": "cpu"}
                if args.steps:
                    options = {"max_steps": args.steps, "precision": "fp32", "device": "cpu"}
                if preset:
                    options["preset"] = preset
                train(data, run, force=True, progress=False, **options)
                r = evaluate_run(run, samples=args.samples, probes=probe_file,
                                 offtopic_samples=args.offtopic_samples, device="cpu")  # fmt: skip
                shape = json.loads((run / "config.json").read_text()).get("train", {}).get("preset")
                row = (Path(persona).stem, str(shape or "-"), f"{minutes:g}", str(_steps(run)),
                       f"{r['test_loss']:.3f}", _pct(r["probe_pass_rate"]),
                       _pct(r["perturbed_pass_rate"]), _pct(r["blind_pass_rate"]),
                       _pct(r["offtopic_pass_rate"]), _pct(covered),
                       f"{time.perf_counter() - started:.0f}")  # fmt: skip
                print(" | ".join(row), flush=True)
                results.append({"persona": persona, "preset": preset, "minutes": minutes,
                                "steps": args.steps, "coverage": covered, "eval": r})  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
