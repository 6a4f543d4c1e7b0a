"""When a run stops early: Ctrl-C, a time budget, and fitting the schedule to that budget.

Stopping is always clean: the loop finishes the step it is in, writes a checkpoint, and prints
how to resume. A step cut in half would leave weights and optimizer state out of step.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable


@contextlib.contextmanager
def stop_on_ctrl_c(state: dict):
    """Ctrl-C asks for a clean stop after the current step; a second Ctrl-C aborts at once."""

    def handler(signum, frame):
        state["stop"] = "interrupted"
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


def steps_that_fit(time_step: Callable[[], None], seconds_left: float, eval_steps: float) -> int:
    """How many steps fit in `seconds_left`, timed on a few real ones.

    `time_step` runs one step that changes nothing (the trainer passes one at learning rate 0);
    `eval_steps` is what the evals will cost, counted in steps.
    """
    times = []
    for _ in range(4):
        t = time.perf_counter()
        time_step()
        times.append(time.perf_counter() - t)
    step_s = min(times[1:])  # the first step pays one-off costs
    return max(1, int(0.9 * seconds_left / step_s - eval_steps))
