#!/usr/bin/env bash
# The built-in guppy before the format 1.1 rework (main's personas/guppy.yaml) and after it (this
# tree's), each generated with default settings and trained as a `tiny` model for the same time
# budget; then each model is scored on its own test split and on the other's, with the probes.
#
#     bash bench/compare_persona_rework.sh            # ~2 x (3 min training + ~2 min the rest)
#     MINUTES=3 BEFORE=main OUT=bench-out/rework bash bench/compare_persona_rework.sh
#
# Needs a quiet machine: the time budget makes the step count depend on the CPU's speed.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-3}
BEFORE=${BEFORE:-main}
OUT=${OUT:-bench-out/rework}
N=${N:-60000}
mkdir -p "$OUT"
git show "$BEFORE:personas/guppy.yaml" > "$OUT/guppy-before.yaml"
cp personas/guppy.yaml "$OUT/guppy-after.yaml"

for which in before after; do
  guppyforge generate "$OUT/guppy-$which.yaml" -n "$N" --seed 42 --out "$OUT/data-$which" --force -q
  rm -rf "$OUT/run-$which"
  # Only a time budget: train fits its schedule (warm-up, cosine) to it, as for --max-minutes alone.
  guppyforge train "$OUT/data-$which" --out "$OUT/run-$which" --preset tiny --seed 0 \
    --max-minutes "$MINUTES" --epochs 1000
  # A busy machine can make the fitted schedule run out a few steps early: finish it.
  [ -f "$OUT/run-$which/config.json" ] || guppyforge train "$OUT/data-$which" --out "$OUT/run-$which" --resume
done
for run in before after; do
  for data in before after; do
    guppyforge eval "$OUT/run-$run" --data "$OUT/data-$data" --persona "$OUT/guppy-after.yaml" \
      --samples 3 --topic-samples 0 --json "$OUT/eval-$run-on-$data.json" > /dev/null
  done
done

python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"{'model':<8} {'steps':>6} {'test loss (own data)':>21} {'test loss (other data)':>23} {'probe pass rate':>16}")
for run, other in (("before", "after"), ("after", "before")):
    cfg = json.loads((out / f"run-{run}" / "config.json").read_text())
    own = json.loads((out / f"eval-{run}-on-{run}.json").read_text())
    cross = json.loads((out / f"eval-{run}-on-{other}.json").read_text())
    steps = cfg.get("results", {}).get("steps", "?")
    print(f"{run:<8} {steps:>6} {own['test_loss']:>21.3f} {cross['test_loss']:>23.3f} "
          f"{own['probe_pass_rate']:>16.1%}")
PY
