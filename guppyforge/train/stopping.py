"""When a run stops early: Ctrl-C, a time budget, and timing a step to fit the schedule to it.

Stopping is always clean: the loop finishes the step it is in, writes a checkpoint, and prints
how to resume. A step cut in half would leave weights and optimizer state out of step.
"""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import dataclass

import torch

from guppyforge.model.packing import Samples, batches
from guppyforge.train.optim import make_optimizer, train_step
from guppyforge.train.precision import Precision


@dataclass
class Stop:
    """Why the run stops before its schedule ends; None while it goes on."""

    reason: str | None = None


@contextlib.contextmanager
def stop_on_ctrl_c(stop: Stop):
    """Ctrl-C asks for a clean stop after the current step; a second Ctrl-C aborts at once."""

    def handler(signum, frame):
        stop.reason = "interrupted"
        signal.signal(signal.SIGINT, previous)

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: signals stay as they are
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def time_a_step(
    model, o, samples: Samples, context: int, device: torch.device, precision: Precision
) -> float:
    """Seconds one training step takes on this machine, timed on a few real ones.

    The steps run at learning rate 0 with their own optimizer, so they change nothing: AdamW's
    and Muon's weight decay are scaled by the learning rate too.
    """
    probe = batches(samples, context, o.batch_size, o.seed, o.loss_on)
    optimizer, scaler = make_optimizer(model, o, device), precision.scaler()
    times = []
    for _ in range(4):
        t = time.perf_counter()
        float(train_step(model, next(probe)[0].to(device), optimizer, scaler, precision, 0.0, 1.0))
        times.append(time.perf_counter() - t)
    return min(times[1:])  # the first step pays one-off costs
