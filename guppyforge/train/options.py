"""Every training option, and which of them a resumed run takes from its checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, fields

from guppyforge.defaults import DEFAULT_PRESET, DEVICES
from guppyforge.errors import GuppyError
from guppyforge.model.batches import LOSS_ON
from guppyforge.train.optim import OPTIMIZERS


@dataclass
class TrainOptions:
    """Every training option. None means "work it out" (recorded once resolved)."""

    preset: str = DEFAULT_PRESET
    max_steps: int | None = None  # fixes the schedule; default: `epochs` passes over the data
    epochs: float = 3.0
    max_minutes: float | None = None  # a time budget: the schedule is fitted to it
    schedule_seconds: float | None = None  # set from max_minutes: the schedule's length in seconds
    stop_after: int | None = None  # stop (with a checkpoint) after this step: for tests, demos
    # Rows of up to `context` tokens per step: ~2,000 tokens, ~60 conversations with guppy-9m.
    # 32 rows train no faster on a CPU and peak ~0.3 GiB higher (guppy-9m: ~1.4 vs ~1.1 GiB).
    batch_size: int = 16
    optimizer: str = "adamw"  # adamw | muon (see optim.py)
    lr: float = 1e-3
    muon_lr: float = 1e-3  # Muon's peak rate for the blocks' matrices (AdamW-matched scale)
    min_lr: float = 1e-4
    warmup_steps: int | None = None  # default: 5 % of max_steps, at most 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int | None = None  # default: ten evals per run
    log_every: int = 10
    seed: int = 0
    device: str = DEVICES[0]
    precision: str = "auto"
    compile: bool = False
    resume: bool = False
    loss_on: str = "replies"
    progress: bool = True


# What decides the numbers a run computes: on --resume these come from the checkpoint.
SCHEDULE = ("preset", "max_steps", "epochs", "batch_size", "lr", "min_lr", "warmup_steps")
SCHEDULE += ("optimizer", "muon_lr", "schedule_seconds")
SCHEDULE += ("weight_decay", "grad_clip", "eval_every", "log_every", "seed", "loss_on")


def resolve_options(o: TrainOptions, saved: dict | None) -> TrainOptions:
    """Check the options; on resume take the schedule (and precision) from the checkpoint."""
    defaults = {f.name: f.default for f in fields(TrainOptions)}
    if saved is not None:
        for key in SCHEDULE:
            mine = getattr(o, key)
            theirs = saved.get(key, defaults[key])  # a key an older checkpoint lacks: default
            if mine not in (None, defaults[key], theirs):
                raise GuppyError(
                    f"--{key.replace('_', '-')} {mine}: the run being resumed used "
                    f"{theirs}. Drop the option to continue it, or start a new --out."
                )
            setattr(o, key, theirs)
        # Precision changes the numbers too, so a resumed run keeps it unless told otherwise
        # (e.g. a run moved from a GPU to a CPU).
        if o.precision == defaults["precision"]:
            o.precision = saved["precision"]
    if o.optimizer not in OPTIMIZERS:
        raise GuppyError(
            f"--optimizer: unknown '{o.optimizer}'. Use one of: {', '.join(OPTIMIZERS)}."
        )
    if o.loss_on not in LOSS_ON:
        raise GuppyError(f"--loss-on: unknown '{o.loss_on}'. Use replies or all.")
    for key in ("max_steps", "batch_size", "eval_every", "log_every", "stop_after"):
        if getattr(o, key) is not None and getattr(o, key) < 1:
            raise GuppyError(f"--{key.replace('_', '-')}: must be at least 1.")
    return o
