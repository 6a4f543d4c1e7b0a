"""Chat decode speed on this machine: tokens/s with the KV cache and without it.

    python bench/bench_chat.py                 # guppy-9m shape, random weights
    python bench/bench_chat.py runs/guppy      # a trained run folder

Speed does not depend on what the weights learned, so random weights measure the same thing a
trained model would. Every row generates the same number of tokens (no stop token), after the
same short prompt, and reports the best of a few repeats (the CPU may be shared) and the median.

- decode tok/s: tokens after the first, per second (the steady rate a reader sees);
- first token: time to the first token, prompt included (what a user waits for).

Rows: the KV cache as `guppyforge chat` runs it (decode layout, see engine.decode_layout),
the cache with the weights as trained, no cache at all (the whole sequence re-run for each token,
like GuppyLM's generate), int8 weights as `guppyforge chat --int8` runs them, and bf16 weights
for comparison: one token reads every weight once, so fewer bytes per weight lift the ceiling.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator

import torch

from guppyforge.model.engine import Engine, sample_next
from guppyforge.model.gpt import GPT
from guppyforge.model.presets import PRESETS
from guppyforge.train.precision import cpu_has_native_bf16

Generate = Callable[[Engine, list[int], int, int], Iterator[int]]


def with_cache(engine: Engine, ids: list[int], n: int, seed: int) -> Iterator[int]:
    return engine.tokens(ids, max_new_tokens=n, temperature=0.7, seed=seed)


@torch.no_grad()
def without_cache(engine: Engine, ids: list[int], n: int, seed: int) -> Iterator[int]:
    """GuppyLM's way: feed the whole sequence again for every new token."""
    model, gen = engine.model, torch.Generator().manual_seed(seed)
    ids = list(ids)
    for _ in range(n):
        logits = model(torch.tensor([ids[-model.cfg.context :]]))[0, -1]
        token = sample_next(logits, 0.7, 50, 1.0, gen)
        ids.append(token)
        yield token


def matmul_bytes(model: torch.nn.Module) -> int:
    """Bytes of the weight matrices one decoding step multiplies by (each is read once)."""
    total = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            total += m.weight.numel() * m.weight.element_size()
        elif callable(getattr(m, "weight", None)):  # a quantized Linear: int8, 1 byte each
            total += m.weight().numel()
    return total


def measure(engine: Engine, generate: Generate, prompt: list[int], n: int, repeats: int):
    """(decode tok/s, seconds to first token) for each repeat."""
    out = []
    for r in range(repeats + 1):
        start = time.perf_counter()
        first = None
        count = 0
        for _ in generate(engine, prompt, n, r):
            count += 1
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        if r:  # the first pass warms up allocators and kernels
            out.append(((count - 1) / (end - first), first - start))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", help="a run folder (default: random guppy-9m)")
    parser.add_argument("--tokens", type=int, default=100, help="tokens per reply")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    def load() -> tuple[GPT, list[int], str]:
        if args.run_dir:
            from guppyforge.model.tokenizer import encode_prompt
            from guppyforge.train.run_folder import load_run

            run = load_run(args.run_dir)
            prompt = encode_prompt(run.tokenizer, [{"role": "user", "content": "are you hungry"}])
            return run.model, prompt, args.run_dir
        torch.manual_seed(0)
        # Ten ids: the length of "<|im_start|>user\nare you hungry<|im_end|>\n..." in ChatML.
        return GPT(PRESETS["guppy-9m"]).eval(), list(range(3, 13)), "guppy-9m, random weights"

    model, prompt, label = load()
    n = min(args.tokens, model.cfg.context - len(prompt))
    mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    print(f"model: {label}, {model.num_params() / 1e6:.2f}M parameters ({mb:.0f} MiB fp32)")
    print(f"prompt {len(prompt)} tokens, reply {n} tokens, best and median of {args.repeats}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU\n")

    as_trained = Engine(model, None, prepare=False)
    rows = [("no cache (GuppyLM's way)", without_cache, as_trained)]
    rows.append(("KV cache, weights as trained", with_cache, as_trained))
    rows.append(("KV cache, decode layout (chat)", with_cache, Engine(load()[0], None)))
    if cpu_has_native_bf16():  # without it bf16 is emulated, slower than fp32
        bf16 = Engine(load()[0].to(torch.bfloat16), None, prepare=False)
        rows.append(("KV cache, bf16 weights (info)", with_cache, bf16))
    rows.append(("KV cache, int8 (chat --int8)", with_cache, Engine(load()[0], None, int8=True)))

    print(f"{'':32} {'decode tok/s':>16} {'first token ms':>16} {'weights GB/s':>13}")
    best = {}
    for name, generate, engine in rows:
        runs = measure(engine, generate, prompt, n, args.repeats)
        rates = [r for r, _ in runs]
        firsts = [f * 1e3 for _, f in runs]
        best[name] = max(rates)
        weights = matmul_bytes(engine.model) / 1e9
        print(
            f"{name:32} {max(rates):7.0f} ({statistics.median(rates):5.0f}) "
            f"{min(firsts):7.1f} ({statistics.median(firsts):5.1f}) "
            f"{max(rates) * weights:13.1f}"
        )
    base = best["no cache (GuppyLM's way)"]
    for name in ("KV cache, decode layout (chat)", "KV cache, int8 (chat --int8)"):
        print(f"\n{name} vs no cache: {best[name] / base:.1f}x tokens/s", end="")
    print("   (target: >= 1,000 tok/s)")
    print("(best, median); weights GB/s: matrix bytes read per second, all of them per token")


if __name__ == "__main__":
    main()
