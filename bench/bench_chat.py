"""Chat decode speed on this machine: tokens/s, first token, and how near the memory limit.

    python bench/bench_chat.py                          # guppy-9m shape, random weights
    python bench/bench_chat.py runs/guppy               # a trained run folder
    python bench/bench_chat.py --before /tmp/old        # also the engine of another checkout
                                                        # (git worktree add /tmp/old COMMIT)

Speed does not depend on what the weights learned, so random weights measure the same thing a
trained model would. Every row generates the same number of tokens (no stop token), after the
same short prompt, sampling at temperature 0.7, top-k 50, and reports the best of a few repeats
(the CPU may be shared) and the median. With --before, the two engines take turns, one process
per round, so both see the same load.

- decode tok/s: tokens after the first, per second (the steady rate a reader sees);
- first token: time to the first token, prompt included (what a user waits for);
- limit: one decoded token reads every weight matrix once and the cache so far, so its floor is
  those bytes over the memory bandwidth, which the bench measures (a large copy, read + write
  bytes per second). "of limit" is the best rate over that ceiling.

Rows: no cache at all (the whole sequence re-run for each token, like GuppyLM's generate), the
cache with the weights as trained (the trainer's samples), the cache as `guppyforge chat` runs
it (decode layout, see speed.decode_layout), bf16 weights on a CPU with native bf16 only
(without it bf16 is emulated, slower than fp32), and int8 weights where the measured checkout
still has `chat --int8` (torch's dynamic int8; removed: 1.2x fp32 on a 2-core AVX2 CPU). Int8
weights (8.5 MiB for guppy-9m) fit a 16 MiB L3 cache: their true ceiling is above this one.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PATHS = {
    "no cache (GuppyLM's way)": "nocache",
    "KV cache, weights as trained": "trained",
    "KV cache, decode layout (chat)": "chat",
    "KV cache, bf16 weights (info)": "bf16",
    "KV cache, int8 (old chat --int8)": "int8",
}


def load(run_dir: str | None):
    """(model, prompt ids, label): a run folder's model, or random guppy-9m weights."""
    import torch

    from guppyforge.model.gpt import GPT, PRESETS

    if run_dir:
        from guppyforge.model.run import load_run
        from guppyforge.model.tokenizer import encode_prompt

        run = load_run(run_dir)
        prompt = encode_prompt(run.tokenizer, [{"role": "user", "content": "are you hungry"}])
        return run.model, prompt, run_dir
    torch.manual_seed(0)
    # Ten ids: the length of "<|im_start|>user\nare you hungry<|im_end|>\n..." in ChatML.
    return GPT(PRESETS["guppy-9m"]).eval(), list(range(3, 13)), "guppy-9m, random weights"


def engine_for(path: str, run_dir: str | None):
    import torch

    from guppyforge.model.engine import Engine

    model = load(run_dir)[0]
    if path == "int8":
        return Engine(model, None, int8=True)
    if path in ("nocache", "trained"):
        return Engine(model, None, prepare=False)
    if path == "bf16":
        return Engine(model.to(torch.bfloat16), None, prepare=False)
    return Engine(model, None)


def generate(engine, path: str, ids: list[int], n: int, seed: int):
    import torch

    from guppyforge.model.sampling import sample_next

    if path != "nocache":
        yield from engine.tokens(ids, max_new_tokens=n, temperature=0.7, seed=seed)
        return
    # GuppyLM's way: feed the whole sequence again for every new token.
    model, gen, ids = engine.model, torch.Generator().manual_seed(seed), list(ids)
    with torch.inference_mode():
        for _ in range(n):
            logits = model(torch.tensor([ids[-model.cfg.context :]]))[0, -1]
            ids.append(sample_next(logits, 0.7, 50, 1.0, gen))
            yield ids[-1]


def bytes_per_token(engine, prompt: int, n: int) -> int:
    """Weight matrices (each read once per token) and the KV cache at its mean length."""
    import torch

    total = 0
    for m in engine.model.modules():
        if isinstance(m, torch.nn.Linear):
            total += m.weight.numel() * m.weight.element_size()
        elif callable(getattr(m, "weight", None)):  # a quantized Linear: int8 and a scale a row
            total += m.weight().numel() + 4 * m.weight().shape[0]
    cfg = engine.cfg
    cache = 2 * cfg.n_layer * cfg.d_model * engine.like.element_size() * (prompt + n / 2)
    return total + int(cache)


def worker(args) -> None:
    """Measure the paths with the guppyforge on sys.path; one JSON line out."""
    import torch

    import guppyforge
    from guppyforge.model.engine import Engine

    if args.threads:
        torch.set_num_threads(args.threads)
    from guppyforge.train.precision import cpu_has_native_bf16

    _, prompt, _ = load(args.run_dir)
    out = {"code": str(Path(guppyforge.__file__).parent.parent)}
    for path in args.paths.split(","):
        if path == "bf16" and not cpu_has_native_bf16():
            continue
        if path == "int8" and "int8" not in inspect.signature(Engine).parameters:
            continue
        engine = engine_for(path, args.run_dir)
        n = min(args.tokens, engine.cfg.context - len(prompt))
        rates, firsts = [], []
        for r in range(args.repeats + 1):
            start, first, count = time.perf_counter(), None, 0
            for _ in generate(engine, path, prompt, n, r):
                count += 1
                first = first or time.perf_counter()
            end = time.perf_counter()
            if r:  # the first pass warms up allocators and kernels
                rates.append((count - 1) / (end - first))
                firsts.append((first - start) * 1e3)
        out[path] = {
            "rates": rates,
            "firsts": firsts,
            "bytes": bytes_per_token(engine, len(prompt), n),
        }
    print(json.dumps(out))


def bandwidth(threads: int | None) -> float:
    """Bytes per second a large copy moves (read + write), best of 5."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    src = torch.ones(64 * 2**20)  # 256 MiB: far past any cache
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(6):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * 4 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", help="a run folder (default: random guppy-9m)")
    parser.add_argument("--before", type=Path, help="a checkout whose engine to compare with")
    parser.add_argument("--tokens", type=int, default=100, help="tokens per reply")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per round")
    parser.add_argument("--rounds", type=int, default=2, help="processes per engine (turns)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--paths", default=",".join(PATHS.values()), help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    here = Path(__file__).resolve().parent.parent
    codes = {"after": here} | ({"before": args.before.resolve()} if args.before else {})
    import torch

    model, prompt, label = load(args.run_dir)
    n = min(args.tokens, model.cfg.context - len(prompt))
    mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    bw = bandwidth(args.threads)
    print(f"model: {label}, {model.num_params() / 1e6:.2f}M parameters ({mb:.0f} MiB fp32)")
    print(f"prompt {len(prompt)} tokens, reply {n} tokens, best and median of "
          f"{args.repeats * args.rounds} ({args.rounds} rounds)")  # fmt: skip
    threads = args.threads or torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, CPU; memory: {bw / 1e9:.1f} GB/s "
          f"(a 256 MiB copy, read + write); load average {os.getloadavg()[0]:.2f}\n")  # fmt: skip

    results: dict[str, dict[str, dict]] = {name: {} for name in codes}
    for r in range(args.rounds):
        for name, code in reversed(codes.items()) if r % 2 else codes.items():
            # The no-cache row is the same model code before and after: measured once.
            paths = [p for p in PATHS.values() if not (p == "nocache" and (name == "before" or r))]
            cmd = [sys.executable, __file__, "--worker", "--paths", ",".join(paths)]
            cmd += ["--tokens", str(args.tokens), "--repeats", str(args.repeats)]
            cmd += [args.run_dir] if args.run_dir else []
            cmd += ["--threads", str(args.threads)] if args.threads else []
            env = os.environ | {"PYTHONPATH": str(code)}
            line = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            got = json.loads(line.strip().splitlines()[-1])
            assert got.pop("code") == str(code), f"measured the code in {got}, not {code}"
            for path, m in got.items():
                into = results[name].setdefault(path, {"rates": [], "firsts": [], "bytes": 0})
                into["rates"] += m["rates"]
                into["firsts"] += m["firsts"]
                into["bytes"] = m["bytes"]

    head = (
        f"{'':40} {'decode tok/s':>15} {'first token ms':>15} {'limit tok/s':>12} {'of limit':>9}"
    )
    print(head)
    for label_, path in PATHS.items():
        for name in codes:
            m = results[name].get(path)
            if m is None:
                continue
            limit = bw / m["bytes"]
            best, median = max(m["rates"]), statistics.median(m["rates"])
            tag = f"{label_}{' (' + name + ')' if len(codes) > 1 and path != 'nocache' else ''}"
            print(f"{tag:40} {best:6.0f} ({median:5.0f}) {min(m['firsts']):6.1f} "
                  f"({statistics.median(m['firsts']):5.1f}) {limit:12.0f} {best / limit:8.0%}")  # fmt: skip
    after = results["after"]
    base = max(after["nocache"]["rates"])
    chat = after["chat"]["rates"]
    print(f"\nafter, chat: {max(chat) / base:.1f}x no cache", end="")
    for path in ("chat", "int8") if "before" in results else ():
        if path in results["before"]:
            before = results["before"][path]["rates"]
            print(f"; {max(chat) / max(before):.2f}x before's {path} (best), "
                  f"{statistics.median(chat) / statistics.median(before):.2f}x (median)", end="")  # fmt: skip
    print("\n(best, median); targets on a 2-core CPU: >= 500 tok/s fp32, first token <= 5 ms")


if __name__ == "__main__":
    main()
