"""Checkpoints: everything needed to continue a run exactly where it stopped.

Exact means bit for bit: a run stopped at step 30 and resumed to 60 logs the same losses as a run
straight to 60. For that a checkpoint holds more than the weights: the optimizer's moments, the
step (which fixes the learning rate), the GradScaler's scale, every random generator's state,
and the position in the data (epoch, row). The file is written to a temporary name and renamed,
so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from guppyforge.errors import GuppyError
from guppyforge.files import atomic_path

FORMAT = 1  # bump when the layout below changes


def rng_state() -> dict:
    """The state of every random generator training draws from."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, **state) -> None:
    """Write `state` (tensors, numbers, dicts) to `path` atomically."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state, "rng": rng_state()}, tmp)


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint; a missing or damaged file is a one-line error, not a traceback."""
    path = Path(path)
    if not path.is_file():
        raise GuppyError(f"{path}: no checkpoint to resume from. Start without --resume.")
    try:
        # weights_only: a checkpoint is data. Unpickling arbitrary objects could run code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a truncated or foreign file
        raise GuppyError(
            f"{path}: corrupt checkpoint ({type(e).__name__}). Delete it and start without "
            "--resume, or restore it from a copy."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise GuppyError(
            f"{path}: not a checkpoint of this guppyforge version. Start without --resume."
        )
    return state
