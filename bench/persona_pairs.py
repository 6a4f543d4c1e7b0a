"""Count the (ask, say) template pairs each built-in persona can make, before and after a change.

    python bench/persona_pairs.py [--before main]

"Before" is each persona file as committed on --before (read with `git show`), "after" is the
working tree. A pair is (topic, step, ask template text, say template text) for every question
and reply the sampler may put together: every pair in format 1; in format 1.1 only the replies
that fit the question (see guppyforge/persona/conversations.py). Prints pairs removed, added, kept.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from guppyforge.files import builtin_personas
from guppyforge.persona.conversations import compile_persona, stated
from guppyforge.persona.schema import load_persona


def pairs(path: Path) -> set[tuple]:
    persona = load_persona(path)
    out = set()
    for t in compile_persona(persona, print).topics:
        first_asks = [dict.fromkeys(b) for b in t.stages[0].ask_bind]
        for k, st in enumerate(t.stages):
            for ask, c in st.asks:
                before = first_asks if k else [{}]  # what the first question may have stated
                for s, (say, _) in enumerate(st.says):
                    if any(st.fits(s, {**b, **dict.fromkeys(stated(c))}) for b in before):
                        out.add((t.name, k, ask.text, say.text))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="main", help="git revision of the 'before' files")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for path in builtin_personas():
            old = Path(tmp) / path.name
            rel = f"personas/{path.name}"
            old.write_bytes(subprocess.run(["git", "show", f"{args.before}:{rel}"],
                                           check=True, capture_output=True).stdout)  # fmt: skip
            a, b = pairs(old), pairs(path)
            print(
                f"{path.stem:<11} before {len(a):>6,} pairs, after {len(b):>6,}: "
                f"{len(a - b):,} removed, {len(b - a):,} added, {len(a & b):,} kept"
            )


if __name__ == "__main__":
    main()
