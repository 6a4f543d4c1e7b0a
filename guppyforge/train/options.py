"""Every training option, and which of them a resumed run takes from its checkpoint."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from guppyforge.defaults import DEFAULT_PRESET, DEVICES
from guppyforge.errors import GuppyError
from guppyforge.model.batches import LOSS_ON
from guppyforge.train.optim import OPTIMIZERS, PEAK_LR


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
    # Muon: on 2 fp32 cores a tiny cat reached eval loss 0.41 in 225 steps, where AdamW at 1e-3
    # had 2.07 and at 3e-3 1.31 after 250 (bench_train.py has the study).
    optimizer: str = "muon"  # muon | adamw (see optim.py)
    lr: float | None = None  # AdamW's peak (every weight with adamw); None: optim.PEAK_LR
    muon_lr: float = 3e-3  # Muon's peak rate for the blocks' matrices (AdamW-matched scale)
    min_lr: float = 3e-4
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


# Checkpoints written before --optimizer existed trained with AdamW.
BEFORE_THE_OPTION = {"optimizer": "adamw"}


def resolve_options(o: TrainOptions, saved: dict | None) -> TrainOptions:
    """Check the options; on resume take the schedule (and precision) from the checkpoint."""
    defaults = {f.name: f.default for f in fields(TrainOptions)}
    if saved is not None:
        for key in SCHEDULE:
            mine = getattr(o, key)
            # A key an older checkpoint lacks: what that version did (it predates the choice).
            theirs = saved.get(key, BEFORE_THE_OPTION.get(key, defaults[key]))
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
    if o.lr is None:
        o.lr = PEAK_LR[o.optimizer]  # recorded as a number, so a resume keeps it
    if o.loss_on not in LOSS_ON:
        raise GuppyError(f"--loss-on: unknown '{o.loss_on}'. Use replies or all.")
    check_numbers(o)
    return o


# (low, high, low_open) per numeric option: NaN, infinity and values outside are refused, so a
# typo never trains one step at --epochs 0 or stops at once at --max-minutes -1.
INTS = {"max_steps": (1, 10**9), "batch_size": (1, 65_536), "eval_every": (1, 10**9),
        "log_every": (1, 10**9), "stop_after": (1, 10**9), "warmup_steps": (0, 10**9),
        "seed": (0, 2**32 - 1)}  # fmt: skip
FLOATS = {"epochs": (0, 1e6, True), "max_minutes": (0, 1e7, True), "lr": (0, 10, True),
          "min_lr": (0, 10, False), "muon_lr": (0, 10, True), "weight_decay": (0, 10, False),
          "grad_clip": (0, 1e6, True)}  # fmt: skip


def check_numbers(o: TrainOptions) -> None:
    """Every numeric option a finite number in its range; one line naming the option if not."""
    for key, (low, high) in INTS.items():
        value = getattr(o, key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise GuppyError(f"--{key.replace('_', '-')} {value!r}: must be a whole number.")
        if not low <= value <= high:
            raise GuppyError(f"--{key.replace('_', '-')} {value}: must be from {low} to {high:,}.")
    for key, (low, high, low_open) in FLOATS.items():
        value = getattr(o, key)
        if value is None:
            continue
        name = f"--{key.replace('_', '-')} {value!r}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GuppyError(f"{name}: must be a number.")
        if not math.isfinite(value) or value < low or (low_open and value == low) or value > high:
            above = "above" if low_open else "at least"
            raise GuppyError(f"{name}: must be a finite number {above} {low:g}, at most {high:g}.")
