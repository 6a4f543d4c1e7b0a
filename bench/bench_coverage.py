"""Does `coverage` predict the blind rate? Coverage against measured blind pass rates.

    python bench/bench_coverage.py guppy=0.85 cat=0.70 lighthouse=0.60 \\
        bench/fixtures/newcomers/vacuum.yaml=0.73 ...

Each argument is a persona (a built-in's name or a file) and the blind pass rate a trained model
of it measured (`bench/bench_character.py`, `guppyforge eval --probes`). For each it computes
the persona's coverage (the stranger bank's held-out share its data answers) and prints it beside
the measured rate; then the straight line that maps coverage to the blind rate (least squares),
each persona's rate predicted by the line fitted on the others (leave-one-out: a fair error,
since no persona's own rate is used to predict it), and how far each prediction fell.
`dataset/coverage.py`'s PREDICT line is what this prints, at the figures the README states.
"""

from __future__ import annotations

import sys

from guppyforge.dataset.coverage import coverage


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(a, b) of y = a + b * x, least squares."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - b * mx, b


def main() -> None:
    pairs = [arg.rpartition("=") for arg in sys.argv[1:]]
    if len(pairs) < 3 or any(not sep for _, sep, _ in pairs):
        raise SystemExit(__doc__)
    names = [p for p, _, _ in pairs]
    blind = [float(r) for _, _, r in pairs]
    covered = [coverage(p).heldout for p in names]
    a, b = fit(covered, blind)
    print(f"blind ~ {a:.3f} + {b:.3f} x coverage   (least squares over {len(names)} personas)")
    print("persona | coverage | blind | predicted (leave-one-out) | error")
    errors = []
    for i, name in enumerate(names):
        rest = [j for j in range(len(names)) if j != i]
        ai, bi = fit([covered[j] for j in rest], [blind[j] for j in rest])
        predicted = ai + bi * covered[i]
        errors.append(abs(predicted - blind[i]))
        print(f"{name} | {covered[i]:.1%} | {blind[i]:.1%} | {predicted:.1%} | "
              f"{100 * (predicted - blind[i]):+.1f} points")  # fmt: skip
    print(
        f"largest error {100 * max(errors):.1f} points, mean {100 * sum(errors) / len(errors):.1f}"
    )


if __name__ == "__main__":
    main()
