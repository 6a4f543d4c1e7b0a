"""Quality per minute: guppyforge's training recipe against GuppyLM's, same CPU, one run.

    python bench/bench_train.py --seconds 600                  # budgets of 1, 2, 5 and 10 minutes
    python bench/bench_train.py --seconds 300 --precision fp32 --preset tiny
    python bench/bench_train.py --recipes adamw muon --seconds 240    # the optimizer study

Every recipe trains the same model shape (`--preset`) on the same conversations with the same
tokenizer, one after the other, each in its own process, for `--seconds` of wall time, its
learning-rate schedule fitted to that time (fully decayed at the end, as `train --max-minutes`
does). Twenty times along the way the clock stops and the model is scored on a fixed set of
test conversations: the loss on the character's replies (the same measure for every recipe,
one conversation per row). At the budgets (10, 20, 50 and 100 % of --seconds) it also answers
the persona's probes, greedily, and the share that pass `eval`'s checks is recorded.

  guppylm   GuppyLM's recipe, re-implemented faithfully: explicit attention (QK^T, softmax with
            a -inf causal mask), dropout 0.1, ReLU MLP, batches of 32 conversations padded to the
            longest, loss on every non-pad token, AdamW 3e-4 -> 3e-5 on all weights, fp32 on a
            CPU (fp16 autocast + GradScaler on CUDA).
  adamw     guppyforge's loop with --optimizer adamw: packed rows, block-diagonal mask, SDPA,
            loss on the replies, AdamW at 3e-3 on every weight, decay on matrices only.
  muon      the default, --optimizer muon: Muon for the blocks' matrices, AdamW for the rest
            (Muon's Newton-Schulz runs in fp32 on a CPU without native bf16, see train/loop.py).

The headline is time to quality: the time GuppyLM's recipe needs to reach its final loss (the
whole budget) divided by the time each guppyforge recipe needs to reach that same loss
(interpolated between scores). Target (DESIGN.md): >= 3x in fp32 with a 10-minute budget.
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

from guppyforge.dataset.folder import load_splits
from guppyforge.evaluate.score import check_reply
from guppyforge.model.engine import build_prompt
from guppyforge.model.gpt import GPT, IGNORE, ModelConfig, get_preset
from guppyforge.model.packing import Samples, batches, tokenize
from guppyforge.model.run import pick_device
from guppyforge.model.sampling import sample_next
from guppyforge.model.tokenizer import END, load_tokenizer
from guppyforge.persona.schema import load_persona
from guppyforge.train.config import TrainOptions
from guppyforge.train.optim import lr_scale, make_optimizer, train_step
from guppyforge.train.precision import pick_precision

BUDGETS = (0.1, 0.2, 0.5, 1.0)  # shares of --seconds reported in the table
CHECKS = 20  # scores along the way, for the time-to-quality curve
EVAL_CONVERSATIONS = 600  # a fixed subset of the test split: every score uses the same ones

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


def guppylm_lr(progress: float) -> float:
    # GuppyLM: warm-up over the first 2 % (200 of 10,000 steps), cosine from 3e-4 to 3e-5;
    # here fitted to the time budget like guppyforge's own schedule.
    if progress < 0.02:
        return 3e-4 * max(progress, 1e-3) / 0.02
    p = (progress - 0.02) / 0.98
    return 3e-5 + (3e-4 - 3e-5) * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


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


# --- the recipes: each returns (model, logits_of, step) -------------------------------------


def guppylm_recipe(cfg, train_s, device, args):
    torch.manual_seed(args.seed)
    model = GuppyLM(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95))
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    stream = padded_batches(train_s, 32, args.seed)

    def step(i: int, progress: float) -> int:
        x, y, conv_tokens, _ = next(stream)
        x, y = x.to(device), y.to(device)
        for group in opt.param_groups:
            group["lr"] = guppylm_lr(progress)
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
        return conv_tokens

    return model, model, step, "fp16" if amp else "fp32"


def guppyforge_recipe(cfg, train_s, device, args):
    torch.manual_seed(args.seed)
    model = GPT(cfg).to(device).train()
    precision = pick_precision(device, args.precision)
    o = TrainOptions(seed=args.seed, optimizer=args.worker, warmup_steps=args.warmup)
    for key in ("lr", "muon_lr", "batch_size"):
        if getattr(args, key) is not None:
            setattr(o, key, getattr(args, key))
    opt, scaler = make_optimizer(model, o, device), precision.scaler()
    stream = batches(train_s, cfg.context, o.batch_size, args.seed, "replies")

    def step(i: int, progress: float) -> int:
        batch = next(stream)[0]
        scale = lr_scale(i, progress, o)
        train_step(model, batch.to(device), opt, scaler, precision, scale, o.grad_clip)
        return batch.tokens

    return model, model, step, precision.name


# --- scoring ---------------------------------------------------------------------------------


@torch.no_grad()
def reply_loss(logits_of, test_s: Samples, device) -> float:
    """Mean loss on the reply tokens of the test conversations, one conversation per row."""
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
        logits = logits_of(
            x.to(device)
        ).float()  # pads only follow a conversation: causal is enough
        y = y.to(device)
        total += float(F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1),
                                       ignore_index=IGNORE, reduction="sum"))  # fmt: skip
        count += int((y != IGNORE).sum())
    return total / count


@torch.no_grad()
def probe_pass_rate(logits_of, tok, persona, context: int, device) -> float:
    """Greedy replies to the persona's probes (no cache: works for both models alike)."""
    end, passed = tok.token_to_id(END), 0
    for probe in persona.probes:
        ids, _ = build_prompt(tok, [{"role": "user", "content": probe.ask}], context, 48)
        new = []
        while len(new) < 48 and len(ids) + len(new) < context:
            token = sample_next(logits_of(torch.tensor([ids + new], device=device))[0, -1], 0)
            if token == end:
                break
            new.append(token)
        passed += not check_reply(tok.decode(new).strip(), probe, persona.style)
    return passed / max(1, len(persona.probes))


def worker(args) -> None:
    """One recipe in this process: train with the clock stopped for each score; print JSON."""
    cfg = get_preset(args.preset)
    device = pick_device(args.device)
    splits, tok = load_splits(args.data), load_tokenizer(args.tokenizer)
    persona = load_persona(Path(args.data) / "persona.yaml")
    train_s = tokenize(splits["train"], tok, cfg.context)
    test = splits["test"].select(range(min(EVAL_CONVERSATIONS, splits["test"].num_rows)))
    test_s = tokenize(test, tok, cfg.context)
    recipe = guppylm_recipe if args.worker == "guppylm" else guppyforge_recipe
    model, logits_of, step, precision = recipe(cfg, train_s, device, args)
    checks = sorted({round(k / CHECKS, 4) for k in range(1, CHECKS + 1)} | set(BUDGETS))
    curve, clock, i, tokens = [], 0.0, 0, 0
    for check in checks:
        started = time.perf_counter()
        while clock + time.perf_counter() - started < check * args.seconds:
            tokens += step(i, (clock + time.perf_counter() - started) / args.seconds)
            i += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        clock += time.perf_counter() - started
        model.eval()
        point = {"seconds": round(clock, 2), "steps": i, "tokens": tokens}
        point["eval_loss"] = reply_loss(logits_of, test_s, device)
        if check in BUDGETS:
            point["probes"] = probe_pass_rate(logits_of, tok, persona, cfg.context, device)
        model.train()
        curve.append(point)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"precision": precision, "curve": curve, "peak_rss_mib": rss}))


def time_to(curve: list[dict], loss: float) -> float | None:
    """Seconds until the curve first reaches `loss`, interpolated between its two scores."""
    before = {"seconds": 0.0, "eval_loss": float("inf")}
    for point in curve:
        if point["eval_loss"] <= loss:
            if math.isinf(before["eval_loss"]):
                return point["seconds"]
            share = (before["eval_loss"] - loss) / (before["eval_loss"] - point["eval_loss"])
            return before["seconds"] + share * (point["seconds"] - before["seconds"])
        before = point
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="dataset folder (default: generate guppy)")
    ap.add_argument("--preset", default="guppy-9m")
    ap.add_argument("--seconds", type=float, default=600.0, help="wall time of each recipe")
    ap.add_argument("--recipes", nargs="+", default=["guppylm", "adamw", "muon"],
                    choices=["guppylm", "adamw", "muon"])  # fmt: skip
    ap.add_argument("--precision", default="fp32", help="guppyforge's: fp32 (default) or auto")
    ap.add_argument("--lr", type=float, help="guppyforge's peak AdamW rate (default: its own)")
    ap.add_argument("--muon-lr", type=float, help="guppyforge's peak Muon rate")
    ap.add_argument("--batch-size", type=int, help="guppyforge's rows per step")
    ap.add_argument("--warmup", type=int, default=50, help="guppyforge's warm-up steps")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    tmp = Path(tempfile.mkdtemp(prefix="bench_train-"))
    if args.data is None:
        args.data = tmp / "guppy"
        print("generating the guppy dataset ...", flush=True)
        subprocess.run(["guppyforge", "generate", "guppy", "--out", str(args.data), "-q"],
                       check=True)  # fmt: skip
    from guppyforge.model.tokenizer import chat_texts, save_tokenizer, train_tokenizer

    cfg = get_preset(args.preset)
    splits = load_splits(args.data)
    save_tokenizer(train_tokenizer(chat_texts(splits["train"]), cfg.vocab_size), tmp, cfg.context)
    rows = {}
    for name in args.recipes:
        print(f"training {name} for {args.seconds:g} s ...", flush=True)
        cmd = [sys.executable, __file__, "--worker", name, "--tokenizer", str(tmp)]
        for key, value in vars(args).items():
            if key not in ("worker", "tokenizer", "recipes") and value is not None:
                cmd += [f"--{key.replace('_', '-')}", str(value)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows[name] = json.loads(out.strip().splitlines()[-1])
        with open(tmp / "curves.jsonl", "a") as f:
            f.write(json.dumps({"recipe": name, **rows[name]}) + "\n")
    report(args, rows, tmp, pick_device(args.device))


def report(args, rows: dict, tmp: Path, device) -> None:
    cpu = "bf16" if "avx512_bf16" in Path("/proc/cpuinfo").read_text() else "no bf16"
    print(f"\npreset {args.preset}, device {device} ({cpu}), {torch.get_num_threads()} threads, "
          f"{args.seconds:g} s per recipe; curves in {tmp / 'curves.jsonl'}")  # fmt: skip
    head = f"{'recipe':<8} {'precision':>9}"
    for b in BUDGETS:
        head += f" {f'{b * args.seconds:g} s: loss / probes':>24}"
    print(head + f" {'tok/s':>7} {'peak MiB':>8}")
    for name, r in rows.items():
        line = f"{name:<8} {r['precision']:>9}"
        for b in BUDGETS:
            scored = [p for p in r["curve"] if "probes" in p]
            p = min(scored, key=lambda p: abs(p["seconds"] - b * args.seconds))  # that budget's
            line += f" {p['eval_loss']:>14.3f} / {p['probes']:>6.1%}"
        last = r["curve"][-1]
        print(line + f" {last['tokens'] / last['seconds']:>7,.0f} {r['peak_rss_mib']:>8.0f}")
    if "guppylm" in rows:
        target = rows["guppylm"]["curve"][-1]["eval_loss"]
        print(f"\ntime to GuppyLM's final loss ({target:.3f}): guppylm {args.seconds:g} s")
        for name, r in rows.items():
            if name != "guppylm":
                t = time_to(r["curve"], target)
                print(
                    f"  {name}: "
                    + (
                        f"{t:.0f} s -> {args.seconds / t:.2f}x (target >= 3x)"
                        if t
                        else "not reached"
                    )
                )


if __name__ == "__main__":
    main()
