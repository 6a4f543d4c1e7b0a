"""GPU figures, measured: the full guppy-9m recipe and GuppyLM's, on the same device, one run.

    python bench/bench_gpu.py                                  # generate guppy, both recipes in full
    python bench/bench_gpu.py --data data/guppy --out bench-out/gpu
    python bench/bench_gpu.py --recipes guppyforge --peak-tflops 312   # a card not in the table
    python bench/bench_gpu.py --preset micro --max-steps 20 --device cpu   # a smoke run

Both recipes train `--preset`'s shape on the same conversations, one after the other:

  guppyforge  `guppyforge train DATA --preset P` as shipped (guppyforge.train.loop.train, in this
              process): packed rows, SDPA, loss on the replies, bf16 (fp16 on a T4); 3 epochs.
  guppylm     GuppyLM's recipe from bench/bench_train.py, for as many steps as GuppyLM itself
              ran on 60K conversations: 10,000 of 32 padded conversations (`--guppylm-steps`).

Columns. wall s: data folder to trained model (guppyforge: tokenizer, its ten evals with sample
replies, final eval, run files; GuppyLM: tokenizing, training). tokens/s: real conversation
tokens per second of training steps (evals and padding excluded). reply loss: both final models
scored by bench_train.reply_loss on the whole test split with the same tokenizer. TFLOP/s: the
model FLOPs of every position computed, padding included (formula at `training_flops`), per
second of training steps; "of peak" divides by the card's dense 16-bit tensor-core peak.
`--max-steps` caps both recipes (smoke runs). The rows go to OUT/bench_gpu.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path
from subprocess import CalledProcessError, run

import torch

from guppyforge.dataset.folder import load_splits
from guppyforge.defaults import DEVICES
from guppyforge.errors import GuppyError
from guppyforge.model.gpt import get_preset, param_counts
from guppyforge.model.packing import epoch_batches, row_width, tokenize
from guppyforge.model.run import load_run, pick_device
from guppyforge.model.tokenizer import chat_texts, load_tokenizer, save_tokenizer, train_tokenizer
from guppyforge.train.loop import train

sys.path.insert(0, str(Path(__file__).parent))
import bench_train  # noqa: E402  (GuppyLM's model, step and the shared reply-loss score)

# Dense (no sparsity) bf16 tensor-core TFLOP/s from NVIDIA's datasheets; the T4 has no bf16
# cores, so its fp16 figure. Keyed by a part of torch.cuda.get_device_name(); the longest key
# that matches wins, so "A100" is not read as "A10" nor "L40S" as "L4".
PEAK_TFLOPS = {"T4": 65, "L4": 121, "L40": 181, "L40S": 362, "A10": 125, "A100": 312,
               "H100": 989, "H100 PCIe": 756, "H200": 989}  # fmt: skip


def sync(device: torch.device) -> None:
    """Wait for the GPU: its work is queued, so a clock read without this measures nothing."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x{torch.get_num_threads()}"
    return str(device)


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None  # a CPU's peak depends on cores, clocks and ISA: pass --peak-tflops
    name = torch.cuda.get_device_name(device)
    hits = [key for key in PEAK_TFLOPS if key in name]
    return PEAK_TFLOPS[max(hits, key=len)] if hits else None


def training_flops(cfg, shapes) -> float:
    """Training FLOPs of steps whose inputs were `shapes`: [(rows, width), ...].

    Per position computed (padding included: the GPU multiplies it all the same), in a batch
    `width` W wide (the PaLM / Chinchilla approximation, 6N + 12·L·d·T):

        6 · N  +  12 · n_layer · d_model · W

    N: the weights every position multiplies by: the blocks and the final LayerNorm, plus the
    tied head's d_model · vocab once (the embedding lookups cost no multiplies). 6 = 2 FLOPs per
    multiply-add x 3 (forward, backward to activations, backward to weights). The second term
    is attention's QK^T and AV, 2 · W · d each per position forward, x 3: over the whole W x W
    square, since both the -inf mask and SDPA's explicit block-diagonal mask compute all of it.
    """
    p = param_counts(cfg)
    n = p["blocks"] + p["final_norm"] + cfg.d_model * cfg.vocab_size
    return float(sum(b * w * (6 * n + 12 * cfg.n_layer * cfg.d_model * w) for b, w in shapes))


def guppyforge_shapes(train_s, cfg, batch_size: int, seed: int, steps: int):
    """The (rows, width) of each batch the run trained on, and their real tokens.

    An epoch's batches depend only on the seed and the epoch (packing.batches), so they are
    rebuilt here rather than recorded by the trainer.
    """
    shapes, tokens, epoch = [], 0, 0
    while len(shapes) < steps:
        for rows in epoch_batches(train_s, cfg.context, batch_size, seed, epoch)[
            : steps - len(shapes)
        ]:
            shapes.append((len(rows), row_width(train_s, rows, cfg.context)))
            tokens += sum(int(train_s.lengths[row].sum()) for row in rows)
        epoch += 1
    return shapes, tokens


def run_guppyforge(args, device, out: Path) -> tuple[dict, Path]:
    """`guppyforge train` in this process; its chatter goes to OUT/guppyforge-train.log."""
    sync(device)
    started = time.perf_counter()
    with open(out / "guppyforge-train.log", "w") as log, redirect_stdout(log):
        run_dir = train(args.data, out / "guppyforge-run", preset=args.preset, force=True,
                        progress=False, device=args.device, max_steps=args.max_steps,
                        seed=args.seed)  # fmt: skip
    sync(device)
    wall = time.perf_counter() - started
    if not (run_dir / "config.json").is_file():
        raise GuppyError(f"{run_dir}: the run stopped before its end (see guppyforge-train.log)")
    config = json.loads((run_dir / "config.json").read_text())
    r, t = config["results"], config["train"]
    row = {"recipe": "guppyforge", "precision": t["precision"], "steps": r["steps"]}
    row |= {"wall_s": wall, "tokens_per_s": r["tokens_per_s"]}
    row["own_final_eval_loss"] = r["final_eval_loss"]  # its own measure: packed, replies only
    return row, run_dir


def run_guppylm(cfg, train_s, device, args, steps: int) -> tuple[dict, object, list]:
    """GuppyLM's recipe for `steps` steps; the shape of every batch recorded by a hook."""
    sync(device)
    started = time.perf_counter()
    model, logits_of, step, precision = bench_train.guppylm_recipe(cfg, train_s, device, args)
    shapes: list = []
    # Exact widths (each batch is padded to its longest conversation), at no cost to the step.
    hook = model.register_forward_pre_hook(lambda m, a: shapes.append(tuple(a[0].shape)))
    tokens, t0 = 0, time.perf_counter()
    for i in range(steps):
        tokens += step(i, i / steps)  # GuppyLM's schedule, by steps as GuppyLM ran it
    sync(device)
    now = time.perf_counter()
    hook.remove()
    model.eval()  # dropout off for the score
    row = {"recipe": "guppylm", "precision": precision, "steps": steps, "wall_s": now - started}
    row |= {"train_s": now - t0, "tokens": tokens, "tokens_per_s": tokens / (now - t0)}
    return row, logits_of, shapes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="dataset folder (default: generate guppy)")
    ap.add_argument("--preset", default="guppy-9m")
    ap.add_argument("--device", default="auto", choices=DEVICES)
    ap.add_argument("--max-steps", type=int, help="cap both recipes (default: each in full)")
    ap.add_argument("--guppylm-steps", type=int, default=10_000, help="GuppyLM's own: 10,000")
    ap.add_argument("--recipes", nargs="+", default=["guppyforge", "guppylm"],
                    choices=["guppyforge", "guppylm"])  # fmt: skip
    ap.add_argument("--peak-tflops", type=float, help="the device's peak (default: the table)")
    ap.add_argument("--out", type=Path, help="where runs and bench_gpu.json go (default: temp)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    try:
        bench(args)
    except (GuppyError, CalledProcessError, OSError) as e:
        sys.exit(f"bench_gpu: {e}")


def bench(args) -> None:
    for key in ("max_steps", "guppylm_steps"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            raise GuppyError(f"--{key.replace('_', '-')}: must be 1 or more")
    cfg, device = get_preset(args.preset), pick_device(args.device)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_gpu-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.data is None:
        args.data = out / "guppy"
        print("generating the guppy dataset ...", flush=True)
        # `python -m guppyforge`: the interpreter running this, whether or not its venv is active
        run([sys.executable, "-m", "guppyforge", "generate", "guppy", "--out", str(args.data),
             "-q"], check=True)  # fmt: skip
    splits = load_splits(args.data)  # one line if it is not a dataset folder
    torch.zeros(1, device=device)  # start CUDA here, not inside the first recipe's clock
    name, peak = device_name(device), peak_tflops(device, args.peak_tflops)
    rows, tok_dir = [], out / "tokenizer"

    if "guppyforge" in args.recipes:
        print(f"training guppyforge's recipe ({args.preset}) on {name} ...", flush=True)
        row, tok_dir = run_guppyforge(args, device, out)
        rows.append(row)
    else:  # GuppyLM alone: a tokenizer trained as `train` trains it
        tok_dir.mkdir(exist_ok=True)
        save_tokenizer(train_tokenizer(chat_texts(splits["train"]), cfg.vocab_size), tok_dir,
                       cfg.context)  # fmt: skip
    # Both recipes read the guppyforge run's tokenizer, so the reply losses count the same tokens.
    started = time.perf_counter()
    tok = load_tokenizer(tok_dir)
    train_s = tokenize(splits["train"], tok, cfg.context)
    test_s = tokenize(splits["test"], tok, cfg.context)
    tokenize_s = time.perf_counter() - started

    if rows:  # guppyforge: rebuild its batches for the FLOPs, score its final model
        row, config = rows[0], json.loads((tok_dir / "config.json").read_text())
        t = config["train"]
        shapes, tokens = guppyforge_shapes(train_s, cfg, t["batch_size"], t["seed"], row["steps"])
        row |= {"tokens": tokens, "train_s": tokens / max(row["tokens_per_s"], 1e-9)}
        row["flops"] = training_flops(cfg, shapes)
        model = load_run(tok_dir, device=str(device)).model
        row["reply_loss"] = bench_train.reply_loss(model, test_s, device)
        del model
    if "guppylm" in args.recipes:
        steps = min(args.guppylm_steps, args.max_steps or args.guppylm_steps)
        print(f"training GuppyLM's recipe for {steps:,} steps on {name} ...", flush=True)
        row, logits_of, shapes = run_guppylm(cfg, train_s, device, args, steps)
        row["wall_s"] += tokenize_s  # its share of the data preparation guppyforge's clock holds
        row["flops"] = training_flops(cfg, shapes)
        row["reply_loss"] = bench_train.reply_loss(logits_of, test_s, device)
        rows.append(row)
    report(rows, name, peak, out, args)


def report(rows: list[dict], name: str, peak: float | None, out: Path, args) -> None:
    for r in rows:
        r["device"], r["tflops"] = name, r["flops"] / r["train_s"] / 1e12
        r["peak_tflops"] = peak
        r["share_of_peak"] = r["tflops"] / peak if peak else None
    (out / "bench_gpu.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\npreset {args.preset}, data {args.data}; runs and bench_gpu.json in {out}")
    print(f"peak: {f'{peak:g} TFLOP/s (16-bit, dense)' if peak else 'n/a (pass --peak-tflops)'}")
    width = max(len(name), 6)
    print(f"{'recipe':<10} {'device':<{width}} {'precision':>9} {'steps':>6} {'wall s':>8} "
          f"{'tokens/s':>9} {'reply loss':>10} {'TFLOP/s':>8} {'of peak':>7}")  # fmt: skip
    for r in rows:
        share = f"{r['share_of_peak']:.1%}" if r["share_of_peak"] is not None else "n/a"
        print(f"{r['recipe']:<10} {name:<{width}} {r['precision']:>9} {r['steps']:>6,} "
              f"{r['wall_s']:>8.1f} {r['tokens_per_s']:>9,.0f} {r['reply_loss']:>10.3f} "
              f"{r['tflops']:>8.3f} {share:>7}")  # fmt: skip
    if len(rows) == 2:
        a, b = rows
        print(f"\nguppyforge reaches a reply loss of {a['reply_loss']:.3f} (GuppyLM: "
              f"{b['reply_loss']:.3f}) in {a['wall_s']:.0f} s of wall time (GuppyLM: "
              f"{b['wall_s']:.0f} s), at {a['tokens_per_s'] / b['tokens_per_s']:.1f}x "
              "GuppyLM's tokens/s")  # fmt: skip


if __name__ == "__main__":
    main()
