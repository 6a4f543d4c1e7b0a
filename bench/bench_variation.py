"""What user-side variation and off-topic rows cost `generate` (run by hand, not a test).

    python bench/bench_variation.py            # 60K conversations per built-in persona
    python bench/bench_variation.py -n 10000

For each built-in persona it draws the same conversations with variation and off-topic rows
off, then on, alternating --repeat times in one process (so both see the same machine load),
and prints the best generation time of each and their ratio, with the share of rows varied.
Target (issue: the character holds): 60K built-in rows with variation on <= 5 s on one core.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from guppyforge.dataset.draw import draw_unique, turn_mix
from guppyforge.files import builtin_personas
from guppyforge.persona.schema import load_persona
from guppyforge.persona.types import Variation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=60_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"{'persona':<12} {'off s':>7} {'on s':>7} {'ratio':>6} {'varied %':>8} {'unique %':>8}")
    for path in builtin_personas():
        on = load_persona(path)
        off = dataclasses.replace(on, variation=Variation(share=0.0), offtopic=None)
        best = {"off": float("inf"), "on": float("inf")}
        result = None
        for _ in range(args.repeat):
            for name, persona in (("off", off), ("on", on)):
                t = time.perf_counter()
                r = draw_unique(path, persona, args.seed, args.n, turn_mix(None, persona),
                                progress=False)  # fmt: skip
                best[name] = min(best[name], time.perf_counter() - t)
                result = r if name == "on" else result
        print(f"{on.name:<12} {best['off']:7.2f} {best['on']:7.2f} {best['on'] / best['off']:6.2f} "
              f"{100 * result.varied / len(result.rows):8.1f} {result.unique_pct:8.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
