"""Training-step speed on this machine: attention path, torch.compile, threads and batch shape.

    python bench/bench_step.py                      # tiny preset, fp32, the guppy data
    python bench/bench_step.py --preset guppy-9m --data data/guppy

Every variant trains the same model shape on the same packed batches. Variants are timed in
turns (A, B, C, A, B, C, ...) so that a machine busy with something else slows them alike; the
table gives each variant's median step time and its speed against the default in the same run.
Conversation tokens per second count the real tokens of the batches, padding excluded.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from guppyforge.dataset.folder import load_splits
from guppyforge.model import gpt
from guppyforge.model.gpt import GPT, get_preset
from guppyforge.model.packing import batches, tokenize
from guppyforge.model.tokenizer import chat_texts, train_tokenizer
from guppyforge.train.config import TrainOptions
from guppyforge.train.optim import make_optimizer, train_step
from guppyforge.train.precision import pick_precision

SDPA = gpt.textbook_attention  # the package's own choice


class Variant:
    """One way to run training steps: its own model, optimizer and batch stream."""

    def __init__(self, name, cfg, samples, args, batch_size=16, textbook=None, compile_=False):
        self.name, self.textbook, self.times, self.tokens = name, textbook, [], 0
        torch.manual_seed(0)
        self.model = GPT(cfg).train()
        self.o = TrainOptions(batch_size=batch_size, optimizer=args.optimizer)
        self.opt = make_optimizer(self.model, self.o, torch.device("cpu"))
        self.precision = pick_precision(torch.device("cpu"), args.precision)
        self.scaler = self.precision.scaler()
        self.stepper = torch.compile(self.model, dynamic=True) if compile_ else self.model
        self.stream = batches(samples, cfg.context, batch_size, 0, "replies")

    def step(self, timed: bool) -> None:
        if self.textbook is not None:
            gpt.textbook_attention = lambda q, mask: self.textbook and mask is not None
        batch = next(self.stream)[0]
        t = time.perf_counter()
        float(train_step(self.stepper, batch, self.opt, self.scaler, self.precision, 1.0, 1.0))
        if timed:
            self.times.append(time.perf_counter() - t)
            self.tokens += batch.tokens
        gpt.textbook_attention = SDPA


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="dataset folder (default: generate guppy)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--optimizer", default=TrainOptions.optimizer, help="the default: muon")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (slow start)")
    args = ap.parse_args()
    if args.data is None:
        args.data = Path(tempfile.mkdtemp(prefix="bench_step-")) / "guppy"
        subprocess.run(["guppyforge", "generate", "guppy", "--out", str(args.data), "-q"],
                       check=True)  # fmt: skip
    cfg = get_preset(args.preset)
    splits = load_splits(args.data)
    tok = train_tokenizer(chat_texts(splits["train"]), cfg.vocab_size)
    samples = tokenize(splits["train"], tok, cfg.context)
    threads = torch.get_num_threads()
    variants = [
        Variant("default (SDPA, 16 rows)", cfg, samples, args),
        Variant("textbook attention", cfg, samples, args, textbook=True),
        Variant("8 rows per step", cfg, samples, args, batch_size=8),
        Variant("32 rows per step", cfg, samples, args, batch_size=32),
    ]
    if args.compile:
        variants.append(Variant("torch.compile", cfg, samples, args, compile_=True))
    for v in variants:  # warm-up: allocators, kernels, compilation (timed: compile's start cost)
        t = time.perf_counter()
        for _ in range(3):
            v.step(False)
        v.warmup = time.perf_counter() - t
    one_thread = Variant("1 thread", cfg, samples, args)
    variants.append(one_thread)
    for _ in range(args.steps):
        for v in variants:
            torch.set_num_threads(1 if v is one_thread else threads)
            v.step(True)
    torch.set_num_threads(threads)
    cpu = "bf16" if "avx512_bf16" in Path("/proc/cpuinfo").read_text() else "no bf16"
    print(
        f"{args.preset}, {args.precision}, {threads} threads, CPU {cpu}, torch {torch.__version__}"
    )
    base = variants[0]
    base_rate = base.tokens / sum(base.times)
    print(f"{'variant':<26} {'median step ms':>14} {'conv tok/s':>11} {'vs default':>10} "
          f"{'3 warm-up steps s':>17}")  # fmt: skip
    for v in variants:
        rate = v.tokens / sum(v.times)
        warmup = f"{v.warmup:>17.1f}" if hasattr(v, "warmup") else f"{'-':>17}"
        print(f"{v.name:<26} {1e3 * statistics.median(v.times):>14.1f} {rate:>11,.0f} "
              f"{rate / base_rate:>9.2f}x {warmup}")  # fmt: skip


if __name__ == "__main__":
    main()
