"""Every training option, written once: its default, its help, and its bounds or choices.

`guppyforge train`'s options are built from these fields (apps/cli_model.py), so what `--help`
shows is what `train()` uses. Nothing here imports torch: `--help` stays fast. A resumed run
takes the SCHEDULE options from its checkpoint (`resolve_options`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

from guppyforge.defaults import DEFAULT_PRESET, DEVICES, LOSS_ON
from guppyforge.errors import GuppyError

OPTIMIZERS = ("muon", "adamw")  # see optim.py
# AdamW's peak rate when --lr is not given, the best measured per optimizer on 2 fp32 cores: with
# Muon, AdamW moves only the embeddings (which are also the output head), biases and LayerNorms,
# and twice AdamW's own rate lifted a 5-minute guppy from 81.5 % to 90.8 % of its probes.
PEAK_LR = {"muon": 6e-3, "adamw": 3e-3}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # see precision.py
NO_LIMIT = 10**9  # the ceiling of counts no run reaches: they only catch typos


def option(
    default,
    help: str | None = None,
    *,
    low=None,
    high=None,
    above=False,
    choices: Iterable[str] | None = None,
    shown: str | None = None,
):
    """A field with its default; `help` puts it on the command line. `low`/`high` bound a
    number (`above`: strictly above `low`), `choices` a name; `shown` is the default as --help
    describes it where the field's own default (None) means "work it out"."""
    meta = {"help": help, "low": low, "high": high, "above": above, "shown": shown}
    meta["choices"] = tuple(choices) if choices is not None else None
    return field(default=default, metadata=meta)


@dataclass
class TrainOptions:
    """Every training option. None means "work it out" (recorded once resolved)."""

    preset: str | None = option(
        None,
        "Model shape (see `guppyforge presets`).",
        shown=f"picked for --max-minutes on a CPU, else {DEFAULT_PRESET}",
    )
    max_steps: int | None = option(
        None, "Steps; fixes the schedule.", low=1, high=NO_LIMIT, shown="3 epochs"
    )
    epochs: float = option(
        3.0,
        "Passes over the data, without --max-steps or --max-minutes.",
        low=0,
        high=1e6,
        above=True,
    )
    max_minutes: float | None = option(
        None, "Time budget; stops with a checkpoint.", low=0, high=1e7, above=True
    )
    schedule_seconds: float | None = None  # set from max_minutes: the schedule's length
    stop_after: int | None = option(
        None, "Stop (with a checkpoint) after this step.", low=1, high=NO_LIMIT
    )
    # Rows of up to `context` tokens per step: ~2,000 tokens, ~60 conversations with guppy-9m.
    # 32 rows train no faster on a CPU and peak ~0.3 GiB higher (guppy-9m: ~1.4 vs ~1.1 GiB).
    batch_size: int = option(
        16, "Rows of `context` tokens per step (per process under torchrun).", low=1, high=65_536
    )
    # Muon: on 2 fp32 cores a tiny cat reached eval loss 0.41 in 225 steps, where AdamW at 1e-3
    # had 2.07 and at 3e-3 1.31 after 250 (bench_train.py has the study).
    optimizer: str = option("muon", "Update rule.", choices=OPTIMIZERS)
    lr: float | None = option(
        None,
        "AdamW's peak rate.",
        low=0,
        high=10,
        above=True,
        shown=", ".join(f"{rate:g} with {name}" for name, rate in PEAK_LR.items()),
    )
    muon_lr: float = option(3e-3, "Peak Muon learning rate.", low=0, high=10, above=True)
    min_lr: float = option(3e-4, low=0, high=10)
    warmup_steps: int | None = option(None, low=0, high=NO_LIMIT)  # 5 % of max_steps, <= 100
    weight_decay: float = option(0.1, low=0, high=10)
    grad_clip: float = option(1.0, low=0, high=1e6, above=True)
    eval_every: int | None = option(
        None, "Steps between evals.", low=1, high=NO_LIMIT, shown="max-steps / 10"
    )
    log_every: int = option(10, low=1, high=NO_LIMIT)
    seed: int = option(0, "Same seed, same run.", low=0, high=2**32 - 1)
    device: str = option(DEVICES[0], "Where to train.", choices=DEVICES)
    precision: str = option("auto", "Number format.", choices=PRECISIONS)
    compile: bool = option(False, "Use torch.compile.")
    resume: bool = option(False, "Continue from checkpoints/last.pt.")
    loss_on: str = option("replies", "Which tokens count in the loss.", choices=LOSS_ON)
    progress: bool = True


# What decides the numbers a run computes: on --resume these come from the checkpoint.
SCHEDULE = ("preset", "max_steps", "epochs", "batch_size", "lr", "min_lr", "warmup_steps")
SCHEDULE += ("optimizer", "muon_lr", "schedule_seconds")
SCHEDULE += ("weight_decay", "grad_clip", "eval_every", "log_every", "seed", "loss_on")


# Checkpoints written before --optimizer existed trained with AdamW.
BEFORE_THE_OPTION = {"optimizer": "adamw"}


def peak_lr(o: TrainOptions) -> float:
    """AdamW's peak rate: `o.lr`, or the default for `o.optimizer` when it was not given."""
    return o.lr if o.lr is not None else PEAK_LR[o.optimizer]


def resolve_options(o: TrainOptions, saved: dict | None) -> TrainOptions:
    """On resume take the schedule (and precision) from the checkpoint; then fix the rate."""
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
    o.lr = peak_lr(o)  # recorded as a number, so a resume keeps it
    return o


# What the loop does when the options leave it open, and what it shows along the way.
EVALS_PER_RUN = 10  # evals along the way when --eval-every is not given
WARMUP_SHARE, WARMUP_MAX = 20, 100  # default warm-up: 1/20 of the steps, at most 100
EVAL_ROWS = 64  # test rows evaluated at each interval (about 8K tokens); the final eval uses all
SAMPLE_TOKENS = 48  # the longest sample reply shown at each eval


def fill_schedule(o: TrainOptions) -> None:
    """The warm-up and eval interval, once the schedule's length (`o.max_steps`) is known."""
    o.warmup_steps = o.warmup_steps or max(1, min(WARMUP_MAX, o.max_steps // WARMUP_SHARE))
    o.eval_every = o.eval_every or max(1, o.max_steps // EVALS_PER_RUN)


def check_options(o: TrainOptions, presets: Iterable[str]) -> None:
    """Every option in its bounds or among its choices (`presets`: the model shapes' names).

    NaN, infinity and values outside are refused with one line naming the option, so a typo
    never trains one step at --epochs 0 or stops at once at --max-minutes -1.
    """
    for f in fields(TrainOptions):
        value, meta, name = getattr(o, f.name), f.metadata, f"--{f.name.replace('_', '-')}"
        choices = tuple(presets) if f.name == "preset" else meta.get("choices")
        unset = value is None and f.default is None  # "work it out": resolved later
        if choices and value not in choices and not unset:
            what = "preset " if f.name == "preset" else ""
            raise GuppyError(f"{name}: unknown {what}'{value}'. Use one of: {', '.join(choices)}.")
        if value is None or meta.get("low") is None:
            continue
        low, high, above = meta["low"], meta["high"], meta["above"]
        if f.type.startswith("int"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise GuppyError(f"{name} {value!r}: must be a whole number.")
            if not low <= value <= high:
                raise GuppyError(f"{name} {value}: must be from {low} to {high:,}.")
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GuppyError(f"{name} {value!r}: must be a number.")
        if not math.isfinite(value) or value < low or (above and value == low) or value > high:
            bound = "above" if above else "at least"
            raise GuppyError(
                f"{name} {value!r}: must be a finite number {bound} {low:g}, at most {high:g}."
            )
