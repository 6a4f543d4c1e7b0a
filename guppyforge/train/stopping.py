"""When a run stops, and how long it may run: Ctrl-C asks for a clean stop after the step, and a
time budget (`--max-minutes`) becomes a schedule by timing a few real steps (`fit_schedule`).

Stopping is always clean: the loop finishes the step it is in, writes a checkpoint, and prints
how to resume. A step cut in half would leave weights and optimizer state out of step.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass

from guppyforge.model.packing import Samples, batches
from guppyforge.train.config import EVAL_ROWS, EVALS_PER_RUN
from guppyforge.train.optim import make_optimizer, train_step


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


def time_a_step(model, o, samples: Samples, context, device, precision, stepper=None) -> float:
    """Seconds one training step takes on this machine, timed on a few real ones.

    The steps run at learning rate 0 with their own optimizer, so they change nothing: AdamW's
    and Muon's weight decay are scaled by the learning rate too. `stepper` is the model as
    trained (DDP's wrapper, whose all-reduce is part of a step), `model` what it wraps.
    """
    probe = batches(samples, context, o.batch_size, o.seed, o.loss_on)
    optimizer, scaler = make_optimizer(model, o, device), precision.scaler()
    stepper = stepper or model
    times = []
    for _ in range(4):
        t = time.perf_counter()
        batch = next(probe)[0].to(device)
        float(train_step(stepper, batch, optimizer, scaler, precision, 0.0, 1.0))
        times.append(time.perf_counter() - t)
    return min(times[1:])  # the first step pays one-off costs


# Fitting the schedule to --max-minutes, from the time of one measured step:
MIN_BUDGET_STEPS = 20  # the fewest steps a time budget trains: fewer cannot warm up and decay
TEST_TOKENS_PER_CONVERSATION = 40  # what the final eval's batches hold, per test conversation
FORWARD_SHARE = 3  # an eval batch runs the forward pass only: about a third of a step
RUN_FILES_SECONDS = 5  # writing the run files at the end (weights, plot, card)


def fit_schedule(
    o, steps_per_epoch: int, context: int, deadline, test_rows, group, say, step_seconds
):
    """Fix the schedule's length before the first step; the deadline the loop stops at.

    `--max-steps` (or a resumed run's schedule) stands; else `--epochs` sets it, unless a time
    budget does: then the clock decides (`o.schedule_seconds`, past --epochs too) and
    `o.max_steps` is the estimate of the steps it holds, from `step_seconds()` (one timed step).
    A budget too short to warm up and decay trains MIN_BUDGET_STEPS by steps instead.
    """
    if o.max_steps is not None:
        return deadline
    o.max_steps = max(1, round(o.epochs * steps_per_epoch))
    if not deadline:
        return None
    step_s = group.max(step_seconds())  # the slowest process sets the pace
    # Keep back what the final eval on the whole test split and the run files take.
    final_eval = test_rows * TEST_TOKENS_PER_CONVERSATION / (o.batch_size * context)
    final_eval *= step_s / FORWARD_SHARE
    left = deadline - time.monotonic() - final_eval - RUN_FILES_SECONDS
    o.schedule_seconds = group.mean(max(1.0, left))  # one schedule for every process
    evals = EVALS_PER_RUN * math.ceil(EVAL_ROWS / o.batch_size) * step_s / FORWARD_SHARE
    fitted = int((o.schedule_seconds - evals) / step_s)
    if fitted >= MIN_BUDGET_STEPS:
        o.max_steps = fitted
        return deadline
    say(
        f"warning: --max-minutes {o.max_minutes:g} is too short for this machine: a step "
        f"takes {step_s:.2f} s and the evals {evals + final_eval:.0f} s, which leaves "
        f"{max(0, fitted)} steps; training {MIN_BUDGET_STEPS} instead, past the budget. Give "
        "more minutes, or --max-steps."
    )
    o.schedule_seconds = None
    o.max_steps = min(o.max_steps, MIN_BUDGET_STEPS)
    return None
