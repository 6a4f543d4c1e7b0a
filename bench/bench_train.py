"""Benchmark guppyforge's training loop against GuppyLM's recipe, side by side (run by hand).

    python bench/bench_train.py                        # built-in guppy data, 60 s each
    python bench/bench_train.py --seconds 20 --preset tiny
    python bench/bench_train.py --data data/cat --steps 200

Both recipes train the same model shape (`--preset`) on the same conversations with the same
tokenizer, one after the other, each in its own process (so each has its own peak memory):

  guppylm     GuppyLM's recipe, re-implemented faithfully: explicit attention (QK^T, softmax
              with a -inf causal mask), dropout 0.1 on attention, residuals and embeddings,
              ReLU MLP, batches of 32 conversations padded to the longest, loss on every
              non-pad token, AdamW (lr 3e-4 -> 3e-5, betas 0.9/0.95, decay 0.1 on all weights),
              fp32 on a CPU, fp16 autocast + GradScaler on CUDA.
  guppyforge  guppyforge's inner loop: packed rows with a block-diagonal mask, SDPA, loss on the
              replies, precision auto, AdamW on its own schedule.

Each trains for --seconds of wall time (or --steps); its cosine schedule is sized to the steps
that fit, from a short timing probe. Reported: conversation tokens per second (real tokens of
the conversations processed, padding not counted), the share of computed positions that were
padding, the loss on the test split's replies (the same measure for both: one conversation per
row, each model's own forward), and peak RSS.
Targets (DESIGN.md): >= 3x conversation tokens/s over GuppyLM's recipe, padding < 5 %.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from guppyforge.dataset.read import load_splits
from guppyforge.model.batches import Samples, batches, tokenize
from guppyforge.model.gpt import GPT, IGNORE, ModelConfig
from guppyforge.model.presets import get_preset
from guppyforge.model.run import pick_device
from guppyforge.model.tokenizer import load_tokenizer
from guppyforge.train.loop import TrainOptions, lr_at, make_optimizer, train_step
from guppyforge.train.precision import pick_precision

# --- GuppyLM's model and recipe (arman-bd/guppylm: model.py, train.py, config.py) -------------


class NaiveAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, dropout: float):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, mask):
        B, T, C = x.shape
        hd = C // self.n_head
        q, k, v = self.qkv(x).reshape(B, T, 3, self.n_head, hd).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        att = self.dropout(F.softmax(att.masked_fill(mask == 0, float("-inf")), dim=-1))
        return self.out((att @ v).transpose(1, 2).contiguous().view(B, T, C))


class GuppyBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = NaiveAttention(cfg, dropout)
        self.up, self.down = nn.Linear(cfg.d_model, cfg.d_ff), nn.Linear(cfg.d_ff, cfg.d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, mask):
        x = x + self.attn(self.norm1(x), mask)
        return x + self.dropout(self.down(F.relu(self.up(self.norm2(x)))))


class GuppyLM(nn.Module):
    """GuppyLM's model at a preset's shape: tied head, learned positions, dropout 0.1."""

    def __init__(self, cfg: ModelConfig, dropout: float = 0.1):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.context, cfg.d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(GuppyBlock(cfg, dropout) for _ in range(cfg.n_layer))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.drop(self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device)))
        mask = torch.tril(torch.ones(T, T, device=idx.device)).unsqueeze(0).unsqueeze(0)
        for block in self.blocks:
            x = block(x, mask)
        return self.lm_head(self.norm(x))


def guppylm_lr(step: int, max_steps: int) -> float:
    # GuppyLM: warm-up 200 of 10,000 steps (2 %), cosine from 3e-4 to 3e-5; sized to max_steps.
    warmup = max(1, max_steps // 50)
    if step < warmup:
        return 3e-4 * step / warmup
    progress = (step - warmup) / max(1, max_steps - warmup)
    return 3e-5 + (3e-4 - 3e-5) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def padded_batches(samples: Samples, batch_size: int, seed: int):
    """GuppyLM's DataLoader: shuffled conversations, x = ids[:-1], y = ids[1:], pad to longest."""
    epoch = 0
    while True:
        order = np.random.default_rng([seed, epoch]).permutation(len(samples))
        for i in range(0, len(order), batch_size):
            ids = [
                samples.tokens[s : s + n]
                for s, n in zip(*spans(samples, order[i : i + batch_size]), strict=True)
            ]
            T = max(len(a) for a in ids) - 1
            x = torch.zeros(len(ids), T, dtype=torch.long)
            y = torch.zeros(len(ids), T, dtype=torch.long)  # 0 is <|pad|>: ignored by the loss
            for b, a in enumerate(ids):
                x[b, : len(a) - 1] = torch.from_numpy(a[:-1])
                y[b, : len(a) - 1] = torch.from_numpy(a[1:])
            yield x, y, sum(len(a) for a in ids), sum(len(a) - 1 for a in ids)
        epoch += 1


def spans(samples: Samples, picked):
    """Start and length of each picked conversation."""
    return samples.starts[picked], samples.lengths[picked]


# --- the two inner loops -----------------------------------------------------------------


def run_guppylm(cfg, train_s, device, seconds, steps, seed):
    torch.manual_seed(seed)
    model = GuppyLM(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95))
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    stream = padded_batches(train_s, 32, seed)

    def step(i: int, max_steps: int):
        x, y, conv_tokens, real = next(stream)
        x, y = x.to(device), y.to(device)
        for group in opt.param_groups:
            group["lr"] = guppylm_lr(i, max_steps)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            logits = model(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=0)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        loss.item()  # GuppyLM logs every step's loss, which waits for the device
        return conv_tokens, real, x.numel()

    return model, timed_loop(step, seconds, steps, device)


def run_guppyforge(cfg, train_s, device, seconds, steps, seed):
    torch.manual_seed(seed)
    model = GPT(cfg).to(device).train()
    precision = pick_precision(device, "auto")
    o = TrainOptions(seed=seed)
    opt, scaler = make_optimizer(model, o, device), precision.scaler()
    stream = batches(train_s, cfg.context, o.batch_size, seed, "replies")

    def step(i: int, max_steps: int):
        o.max_steps, o.warmup_steps = max_steps, max(1, min(100, max_steps // 20))
        batch = next(stream)[0]
        train_step(model, batch.to(device), opt, scaler, precision, lr_at(i, o), o.grad_clip)
        return batch.tokens, batch.tokens, batch.idx.numel()

    return model, timed_loop(step, seconds, steps, device) | {"precision": precision.name}


def timed_loop(step, seconds: float, steps: int | None, device) -> dict:
    """Run `step` for `seconds` (or `steps`); size the schedule from a 3-step timing probe."""
    probe = []
    for i in range(4):
        t = time.perf_counter()
        step(i, 10_000)
        probe.append(time.perf_counter() - t)
    max_steps = steps or max(10, int(seconds / min(probe[1:])))
    conv = real = computed = 0
    started, i = time.perf_counter(), 0
    while i < max_steps and (steps or time.perf_counter() - started < seconds):
        c, r, n = step(i, max_steps)
        conv, real, computed, i = conv + c, real + r, computed + n, i + 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    return {
        "steps": i,
        "seconds": elapsed,
        "tokens_per_s": conv / elapsed,
        "padding": 1 - real / computed,
    }


@torch.no_grad()
def reply_loss(model, test_s: Samples, device) -> float:
    """Mean loss on the reply tokens of the test split, one conversation per row."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(test_s), 64):
        picked = np.arange(i, min(i + 64, len(test_s)))
        T = int(test_s.lengths[picked].max())
        x = torch.zeros(len(picked), T, dtype=torch.long)
        y = torch.full((len(picked), T), IGNORE, dtype=torch.long)
        for b, (s, n) in enumerate(zip(*spans(test_s, picked), strict=True)):
            x[b, :n] = torch.from_numpy(test_s.tokens[s : s + n])
            reply = torch.from_numpy(test_s.reply[s + 1 : s + n] == 1)
            y[b, : n - 1] = torch.where(reply, x[b, 1:n], IGNORE)
        out = model(x.to(device))  # pads only follow a conversation: causal is enough
        logits = (out[0] if isinstance(out, tuple) else out).float()  # GPT gives (logits, loss)
        y = y.to(device)
        total += float(
            F.cross_entropy(
                logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=IGNORE, reduction="sum"
            )
        )
        count += int((y != IGNORE).sum())
    return total / count


def worker(args) -> None:
    """One recipe in this process: train, evaluate, print one JSON line."""
    cfg = get_preset(args.preset)
    device = pick_device(args.device)
    splits, tok = load_splits(args.data), load_tokenizer(args.tokenizer)
    train_s = tokenize(splits["train"], tok, cfg.context)
    test_s = tokenize(splits["test"], tok, cfg.context)
    run = run_guppylm if args.worker == "guppylm" else run_guppyforge
    model, result = run(cfg, train_s, device, args.seconds, args.steps, args.seed)
    result["eval_loss"] = reply_loss(model, test_s, device)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result.setdefault("precision", "fp16" if device.type == "cuda" else "fp32")
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", type=Path, help="dataset folder (default: generate the guppy persona)"
    )
    ap.add_argument("--preset", default="guppy-9m")
    ap.add_argument("--seconds", type=float, default=60.0, help="wall time of training, each")
    ap.add_argument("--steps", type=int, help="a fixed step count instead of --seconds")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker", choices=["guppylm", "guppyforge"], help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    tmp = Path(tempfile.mkdtemp(prefix="bench_train-"))
    if args.data is None:
        args.data = tmp / "guppy"
        print("generating the guppy dataset ...", flush=True)
        subprocess.run(
            ["guppyforge", "generate", "guppy", "--out", str(args.data), "-q"], check=True
        )
    from guppyforge.model.tokenizer import chat_texts, save_tokenizer, train_tokenizer

    cfg = get_preset(args.preset)
    splits = load_splits(args.data)
    save_tokenizer(train_tokenizer(chat_texts(splits["train"]), cfg.vocab_size), tmp, cfg.context)
    rows = {}
    for name in ("guppylm", "guppyforge"):
        print(
            f"training {name} ({args.steps or args.seconds} {'steps' if args.steps else 's'}) ...",
            flush=True,
        )
        cmd = [sys.executable, __file__, "--worker", name, "--data", str(args.data)]
        cmd += ["--tokenizer", str(tmp), "--preset", args.preset, "--seconds", str(args.seconds)]
        cmd += ["--device", args.device, "--seed", str(args.seed)]
        cmd += ["--steps", str(args.steps)] if args.steps else []
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows[name] = json.loads(out.strip().splitlines()[-1])

    head = f"{'recipe':<11} {'precision':>9} {'steps':>6} {'conv tok/s':>11} {'padding %':>9}"
    head += f" {'eval loss (replies)':>19} {'peak RSS MiB':>12}"
    print(
        f"\npreset {args.preset}, {len(splits['train']):,} train conversations, device {pick_device(args.device)}"
    )
    print(head)
    for name, r in rows.items():
        print(
            f"{name:<11} {r['precision']:>9} {r['steps']:>6} {r['tokens_per_s']:>11,.0f}"
            f" {100 * r['padding']:>9.1f} {r['eval_loss']:>19.3f} {r['peak_rss_mib']:>12.0f}"
        )
    ratio = rows["guppyforge"]["tokens_per_s"] / rows["guppylm"]["tokens_per_s"]
    print(f"\nguppyforge / guppylm conversation tokens/s: {ratio:.2f}x (target >= 3x)")


if __name__ == "__main__":
    main()
