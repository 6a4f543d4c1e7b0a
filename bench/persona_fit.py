"""How many generated conversations of each built-in persona fit a preset's context.

    python bench/persona_fit.py [--preset tiny] [-n 60000] [PERSONA...]

Generates each built-in persona with its default settings, trains the preset's tokenizer on the
train split (as `train` does) and counts conversations longer than the context: those `train`
cuts at a turn boundary (or drops, when even the first turn does not fit).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from guppyforge.dataset.folder import load_splits
from guppyforge.dataset.generate import generate_dataset
from guppyforge.files import builtin_personas
from guppyforge.model.gpt import PRESETS
from guppyforge.model.packing import tokenize
from guppyforge.model.tokenizer import chat_texts, train_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("-n", type=int, default=60_000)
    ap.add_argument("personas", nargs="*", help="built-in names (default: all)")
    args = ap.parse_args()
    cfg = PRESETS[args.preset]
    with tempfile.TemporaryDirectory() as tmp:
        for path in builtin_personas():
            if args.personas and path.stem not in args.personas:
                continue
            out = Path(tmp) / path.stem
            generate_dataset(path, out, n=args.n, progress=False)
            splits = load_splits(out)
            tok = train_tokenizer(chat_texts(splits["train"]), cfg.vocab_size)
            for name in ("train", "test"):
                s = tokenize(splits[name], tok, cfg.context)
                total = len(s) + s.too_long
                print(
                    f"{path.stem:<11} {args.preset} {name:<5} {total:>6} conversations, longest "
                    f"kept {int(s.lengths.max())} tokens, mean {s.lengths.mean():.1f}; past "
                    f"{cfg.context}: {s.truncated} cut at a turn, {s.too_long} dropped"
                )


if __name__ == "__main__":
    main()
