"""Benchmark personas that sit at the persona limits against a built-in one (run by hand).

    python bench/bench_limits.py              # 60K conversations each
    python bench/bench_limits.py -n 20000     # quicker

Each persona below passes `guppyforge validate` and pushes one cost as far as the limits allow:
grammar work per message (bounds.MAX_MESSAGE_WORK), a 5,000-alternative symbol whose one heavy
alternative defeats the shuffle bag, {% if %} templates rendered by Jinja, replies that need a
never_say redraw half the time, and 2,000-character messages. The promise (issue 15): any
persona inside the limits generates in at most a few times a built-in persona's time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

from guppyforge.dataset.generate import generate_dataset
from guppyforge.files import builtin_persona
from guppyforge.persona import bounds

HEAD = "guppyforge: 1\nname: {name}\ndisplay_name: X\nsummary: A persona at the limits.\n"


def hostile_personas(work: int = bounds.MAX_MESSAGE_WORK) -> dict[str, str]:
    """name -> persona text, each inside every limit and as costly as they allow."""
    uniform = ",".join(f"w{i}" for i in range(5000))
    heavy = ",".join(["{text: heavy, weight: 100000}"] + [f"x{i}" for i in range(4999)])
    refs = "{{ w }} " * (work - 1)  # one expansion for `a`, the rest for its `w`s
    grammar = f'grammar:\n  w: [{{W}}]\n  a: ["{refs}"]\n'
    fast = "topics:\n  t:\n    ask: [\"{{ pick('a') }}\"]\n    say: [\"{{ pick('a') }}\"]\n"
    third = "{{ w }} " * (work // 3 - 2)
    cond = "{% if pick('w') == 'w1' %}one{% else %}" + "{{ pick('b') }}" + "{% endif %}"
    jinja = (f'grammar:\n  w: [{uniform}]\n  b: ["{third}"]\n' + "topics:\n  t:\n"
             f"    ask: [\"{cond}\"]\n    say: [\"{cond}\"]\n")  # fmt: skip
    says = ["\"{{ pick('a') }}\""] * 4 + ["\"nope {{ pick('a') }}\""] * 4
    filler = " ".join(f"word{i % 97} and more" for i in range(150))[:1950]
    return {
        "work": grammar.replace("{W}", uniform) + fast,
        "heavy-bag": grammar.replace("{W}", heavy) + fast,
        "jinja": jinja,
        "never-say": "style: {never_say: [nope]}\n" + grammar.replace("{W}", uniform)
        + "topics:\n  t:\n    ask: [\"{{ pick('a') }}\"]\n    say: [" + ", ".join(says) + "]\n",
        "long": f"grammar:\n  w: [{uniform}]\ntopics:\n  t:\n"
        f"    ask: [\"{{{{ w }}}} {filler}\"]\n    say: [\"{{{{ pick('w') }}}} {filler}\"]\n",
    }  # fmt: skip


def write_personas(folder: Path) -> dict[str, Path]:
    out = {}
    for name, body in hostile_personas().items():
        out[name] = folder / f"{name}.yaml"
        out[name].write_text(HEAD.format(name=name) + body, encoding="utf-8")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=60_000, help="conversations per persona")
    parser.add_argument("--baseline", default="guppy", help="the built-in persona to compare to")
    args = parser.parse_args()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"limits benchmark: n={args.n:,}, {os.cpu_count()} cores, load {load}")
    print(f"{'persona':<10} {'rows':>7} {'total s':>8} {'gen s':>7} {'x baseline':>10}")
    warnings.simplefilter("ignore")  # capacity warnings: the rows column shows them
    with tempfile.TemporaryDirectory() as tmp:
        personas = {args.baseline: builtin_persona(args.baseline), **write_personas(Path(tmp))}
        base = None
        for name, path in personas.items():
            started = time.perf_counter()
            r = generate_dataset(path, Path(tmp) / name, n=args.n, seed=7, progress=False)
            total = time.perf_counter() - started
            base = base or total
            print(f"{name:<10} {r.rows:>7,} {total:>8.2f} {r.generation_seconds:>7.2f} "
                  f"{total / base:>10.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
