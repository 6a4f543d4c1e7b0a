"""The update rule: which optimizer moves which weights (Muon for the blocks' matrices and
AdamW for the rest, or AdamW alone), Muon with fp32 Newton-Schulz for CPUs without bf16, and the
learning-rate schedule (warm-up, then cosine by steps or by the clock); `train_step`, one
step of it on one batch.
"""

from __future__ import annotations

import math

import torch

from guppyforge.model.gpt import GPT
from guppyforge.train.config import TrainOptions, peak_lr
from guppyforge.train.precision import Precision, cpu_has_native_bf16

# Two optimizers are on offer (`--optimizer`):
# - `adamw`: AdamW for every weight, decay on matrices only: the classic recipe.
# - `muon`: Muon for the blocks' weight matrices, AdamW for the rest (embeddings, biases,
#   LayerNorms). Muon orthogonalises each matrix's momentum (a few Newton-Schulz iterations), so
#   every direction of the matrix moves at a similar rate, instead of the few largest ones
#   dominating: more learning per step, which is what a short CPU budget needs. Embeddings and
#   vectors are not matrices in that sense (a row per token, a gain per channel), so AdamW keeps
#   them.
#
# The schedule is a linear warm-up, then a cosine decay from the peak down to `--min-lr` (as a
# share of AdamW's peak, the same share for Muon's rate). Its clock
# is the step count when `--max-steps` (or `--epochs`) fixes the length, and the wall clock when
# `--max-minutes` does, so a budgeted run always ends fully decayed however fast the machine is.


class Optimizers:
    """One or two torch optimizers that step together, with one learning-rate scale."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    def describe(self) -> str:
        """What moves which weights, for the line the trainer prints at start."""
        names = {
            torch.optim.Muon: "muon (bf16 Newton-Schulz)",
            Fp32Muon: "muon (fp32 Newton-Schulz)",
            torch.optim.AdamW: "adamw",
        }
        kinds = [names.get(type(opt), type(opt).__name__) for opt in self.optimizers]
        if len(kinds) == 1:
            return kinds[0]
        return f"{kinds[0]} for the blocks' matrices, {kinds[1]} for the rest"

    def set_scale(self, scale: float) -> None:
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = group["peak_lr"] * scale

    def step(self, scaler: torch.amp.GradScaler) -> None:
        for opt in self.optimizers:
            scaler.step(opt)  # skipped when fp16 gradients overflowed

    def unscale(self, scaler: torch.amp.GradScaler) -> None:
        for opt in self.optimizers:
            scaler.unscale_(opt)

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def state_dict(self) -> list[dict]:
        return [opt.state_dict() for opt in self.optimizers]

    def load_state_dict(self, states: list[dict] | dict) -> None:
        states = [states] if isinstance(states, dict) else states
        for opt, state in zip(self.optimizers, states, strict=True):
            opt.load_state_dict(state)


def make_optimizer(model: GPT, o: TrainOptions, device: torch.device) -> Optimizers:
    """The optimizers `o.optimizer` names, each group carrying its `peak_lr`."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    # Decay pulls weights toward zero, a brake on memorising. On matrices (and embeddings) that
    # helps; on biases and LayerNorm gains it only fights the scale the model needs.
    matrices = [p for n, p in params.items() if p.dim() == 2 and n.startswith("h.")]
    tables = [p for n, p in params.items() if p.dim() == 2 and not n.startswith("h.")]
    vectors = [p for p in params.values() if p.dim() < 2]
    # Fused: one kernel updates every tensor, instead of a dozen small ops per tensor.
    fused = device.type in ("cuda", "cpu")
    adam_groups = [
        {"params": tables, "weight_decay": o.weight_decay, "peak_lr": peak_lr(o)},
        {"params": vectors, "weight_decay": 0.0, "peak_lr": peak_lr(o)},
    ]
    if o.optimizer == "adamw":
        adam_groups[0]["params"] = matrices + tables
        return Optimizers(
            [torch.optim.AdamW(adam_groups, lr=peak_lr(o), betas=(0.9, 0.95), fused=fused)]
        )
    # "match_rms_adamw" scales Muon's orthogonal update to AdamW's typical size, so its learning
    # rate means what AdamW's does; muon_lr can then sit near lr (measured in bench_train.py).
    # fp32 asked for on a CPU is fp32 throughout: the numbers and speed of a CPU without bf16.
    fp32_ns = device.type == "cpu" and (o.precision == "fp32" or not cpu_has_native_bf16())
    muon = (Fp32Muon if fp32_ns else torch.optim.Muon)(
        [{"params": matrices, "peak_lr": o.muon_lr}],
        lr=o.muon_lr,
        weight_decay=o.weight_decay,
        adjust_lr_fn="match_rms_adamw",
    )
    adam = torch.optim.AdamW(adam_groups, lr=peak_lr(o), betas=(0.9, 0.95), fused=fused)
    return Optimizers([muon, adam])


class Fp32Muon(torch.optim.Muon):
    """torch's Muon with its Newton-Schulz iterations in fp32 instead of bf16.

    torch runs the orthogonalisation in bf16, which is fast on a GPU and on CPUs with native
    bf16, but emulated (about 5x slower per training step, measured) on a CPU without it. The
    update is otherwise torch's: momentum, Nesterov, the five quintic iterations, the learning
    rate matched to AdamW's scale, decoupled weight decay. The state ("momentum_buffer") is
    torch's too, so a checkpoint resumes with either class.
    """

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            a, b, c = group["ns_coefficients"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                g = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                x = g.T if g.shape[0] > g.shape[1] else g  # the Gram matrix of the short side
                x = x / x.norm().clamp(min=group["eps"])  # singular values <= 1
                for _ in range(group["ns_steps"]):
                    gram = x @ x.T
                    x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
                update = x.T if g.shape[0] > g.shape[1] else x
                scale = 0.2 * math.sqrt(max(p.shape))  # "match_rms_adamw"
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * scale)


def lr_scale(step: int, progress: float, o) -> float:
    """The learning rate as a share of its peak: warm-up over steps, then cosine on `progress`.

    `progress` is the share of the schedule done (steps or seconds, see the module docstring).
    """
    # Warm-up: Adam's moment estimates are noise for the first steps; full-size updates on
    # them can knock a fresh model into a bad region it never leaves.
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    floor = o.min_lr / peak_lr(o)
    return floor + 0.5 * (1 - floor) * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def step_progress(step: int, o) -> float:
    """Progress of a schedule measured in steps (warm-up excluded)."""
    return (step - o.warmup_steps) / max(1, o.max_steps - o.warmup_steps)


# --- One step: forward, backward, the update.


def train_step(
    model, batch, optimizers: Optimizers, scaler, precision: Precision, scale, clip, weight=1.0
):
    """One optimizer step on one batch; returns the loss (a tensor, so CUDA need not wait).

    `weight`: this process's share of the batch's counted tokens times the number of processes
    (1 alone; see distributed.py), so DDP's average of the gradients is the whole batch's. The
    loss returned is weighed too: its mean over the processes is the batch's loss.
    """
    optimizers.set_scale(scale)
    with precision.autocast():
        loss = model(batch.idx, batch.targets, batch.positions, batch.attn_mask) * weight
    # Under DDP, backward all-reduces the gradients (its hooks, bucket by bucket) and returns
    # once every process holds the average: clipping and Muon below see the whole batch's.
    scaler.scale(loss).backward()  # the scaler is a no-op unless precision is fp16
    optimizers.unscale(scaler)  # clip the true gradients, not the scaled ones
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizers.step(scaler)
    scaler.update()
    optimizers.zero_grad()
    return loss.detach()
