"""Training one model in several processes: PyTorch DistributedDataParallel under torchrun.

`torchrun --nproc-per-node N -m guppyforge train ...` (or `guppyforge train --nproc N`, which
runs torchrun for you) starts N copies of the same command; torchrun gives each its place in the
environment (RANK, WORLD_SIZE, LOCAL_RANK and where to meet). What makes N processes train the
model that one process would with N times the rows:

- Every process builds the same seeded plan of batches, each of N x `--batch-size` rows, and
  takes every N-th row of each: together they hold exactly the batch one process would.
- Each process weighs its loss by its share of the batch's counted tokens, and DDP averages the
  gradients during backward (its hooks all-reduce each bucket as it fills), so every process
  holds the gradient of the whole batch's mean loss before clipping and the optimizer step.
  Muon orthogonalises that averaged gradient, the same matrix in every process.
- Every decision that reads a clock or a signal (a time budget's schedule, Ctrl-C, running out of
  minutes) is agreed on with one small all-reduce, so all processes stop at the same step.
- Process 0 alone writes the run folder, prints, evaluates and shows samples; it reads the
  checkpoint and trains the tokenizer, and hands both to the others, so the other machines of a
  multi-node run need the dataset only.

One process (no torchrun) is the same code with a group of one: every method below is then a
no-op that returns its argument.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist

from guppyforge.errors import GuppyError
from guppyforge.model.packing import Batch, Samples, collate, epoch_batches

T = TypeVar("T")
# A long eval on process 0 keeps the others waiting at their next all-reduce; this is how long.
WAIT = timedelta(minutes=60)


@dataclass
class Group:
    """This process's place among the processes training one model."""

    rank: int = 0  # 0 writes the run folder
    world: int = 1
    local_rank: int = 0  # which GPU of this machine is ours
    device: torch.device = torch.device("cpu")
    joined: bool = False  # this group was started here (and is ended by `leave`)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def together(self) -> bool:
        return self.world > 1

    @property
    def backend(self) -> str:
        return dist.get_backend() if self.together else ""

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to step: DDP, whose backward all-reduces the gradients, when together."""
        if not self.together:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def from_main(self, work: Callable[[], T]) -> T:
        """Run `work` on process 0 and hand its result to every process.

        A GuppyError there (a run folder in the way, a damaged checkpoint) is raised in every
        process, so none waits for a partner that has left.
        """
        if not self.together:
            return work()
        result, error = None, None
        if self.main:
            try:
                result = work()
            except GuppyError as e:
                error = str(e)
        box = [result, error]
        dist.broadcast_object_list(box, src=0)
        if box[1] is not None:
            raise GuppyError(box[1])
        return box[0]

    def _reduce(self, value: float, op) -> float:
        if not self.together:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t, op=op)
        return float(t)

    def total(self, value: float) -> float:
        """`value` summed over the processes (the same number in each)."""
        return self._reduce(value, dist.ReduceOp.SUM)

    def mean(self, value: float) -> float:
        """`value` averaged over the processes: one clock reading they all agree on."""
        return self.total(value) / self.world

    def max(self, value: float) -> float:
        """The largest `value` of any process: a stop any process asks for, the slowest step."""
        return self._reduce(value, dist.ReduceOp.MAX)

    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def leave(self) -> None:
        """End the group `join` started (one the caller started is the caller's to end)."""
        if self.joined and dist.is_initialized():
            # Every process past its last collective before any tears gloo down: on busy cores a
            # process that left first was seen to abort ("terminate called without an active
            # exception") while the other still used the group.
            dist.barrier()
            dist.destroy_process_group()


def join(device: torch.device) -> Group:
    """This process's group: under torchrun, join the others (NCCL on CUDA, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Group(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise GuppyError(
                f"LOCAL_RANK {local_rank}: this machine has {torch.cuda.device_count()} GPUs. "
                "Start at most that many processes per node (--nproc-per-node)."
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise GuppyError(f"--device {device.type}: several processes train on cuda or cpu only.")
    joined = not dist.is_initialized()
    if joined:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=WAIT)
    return Group(rank, world, local_rank, device, joined)


# --- Each process's share of every batch.


def counted_targets(samples: Samples, loss_on: str) -> np.ndarray:
    """How many targets each conversation adds to the loss (see packing.collate)."""
    if loss_on != "replies":
        return np.maximum(samples.lengths - 1, 0)
    # reply[t + 1] counts the prediction made at t: prefix sums over the shifted mask.
    sums = np.concatenate([[0], np.cumsum(samples.reply[1:], dtype=np.int64)])
    ends = samples.starts + samples.lengths - 1
    return sums[ends] - sums[samples.starts]


@dataclass
class Share:
    """This process's rows of one batch, and what the whole batch holds."""

    batch: Batch
    position: tuple[int, int]  # (epoch, batch) after this one, as in packing.batches
    tokens: int  # conversation tokens in the whole batch, every process's rows
    weight: float  # this process's counted targets over the batch's, times the processes


def shares(
    samples: Samples,
    context: int,
    rows_per_process: int,
    seed: int,
    loss_on: str,
    group: Group,
    start: tuple[int, int] = (0, 0),
) -> Iterator[Share]:
    """packing.batches for one process of `group`: the plan of one process with `world` times
    the rows, every `world`-th row of each batch from row `rank` on.

    An epoch's last batch can hold fewer rows than processes; a process left without any runs an
    empty batch (weight 0), so the others never wait for its gradients in vain.
    """
    rows = rows_per_process * group.world
    counted = counted_targets(samples, loss_on)
    epoch, index = start
    plan = epoch_batches(samples, context, rows, seed, epoch)
    while True:
        if index == len(plan):
            epoch, index = epoch + 1, 0
            plan = epoch_batches(samples, context, rows, seed, epoch)
        whole = plan[index]
        index += 1
        mine = whole[group.rank :: group.world]
        every = [i for row in whole for i in row]
        total = int(counted[every].sum())
        own = int(counted[[i for row in mine for i in row]].sum()) if mine else 0
        tokens = int(samples.lengths[every].sum())
        weight = own * group.world / total if total else 0.0
        batch = collate(samples, mine, context, loss_on) if mine else empty_batch(context)
        yield Share(batch, (epoch, index), tokens, weight)


def empty_batch(context: int) -> Batch:
    """A batch of no rows: its forward and backward add nothing, but DDP's all-reduce still runs."""
    T = min(8, context)
    zeros = torch.zeros((0, T), dtype=torch.int64)
    mask = torch.ones((0, 1, T, T), dtype=torch.bool)
    return Batch(zeros, zeros.clone(), zeros.clone(), mask, 0)


# --- `guppyforge train --nproc N`: torchrun on this machine.


def most_processes(device: torch.device) -> tuple[int, str]:
    """How many training processes this machine can give a core (or a GPU) each, and of what.

    More would only share them: slower, and each holds its own copy of the data and model."""
    if device.type == "cuda":
        return torch.cuda.device_count(), "GPUs"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1, "CPU cores"


def launch(nproc: int, argv: list[str]) -> int:
    """Run `guppyforge train ARGV` in `nproc` processes with torchrun; the exit status.

    This is `torchrun --standalone --nproc-per-node N -m guppyforge train ARGV`, run in this
    process (torch.distributed.run's own code): `--standalone` picks a free port on this machine,
    so two such runs never meet. Ctrl-C reaches torchrun, which passes it on to each process:
    they stop together after the step, process 0 writes the checkpoint, and the status is 130.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if "RANK" in os.environ:
        raise GuppyError("--nproc: already running under torchrun. Drop --nproc.")
    # Each process takes its share of this machine's cores, not all of them each.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    args = ["--standalone", f"--nproc-per-node={nproc}", "-m", "guppyforge", "train", *argv]
    try:
        run(get_args_parser().parse_args(args))
    except SignalException as e:  # Ctrl-C (or a kill): the processes stopped cleanly first
        return 128 + int(e.sigval)
    except ChildFailedError as e:  # the process said why (an `error:` line, a traceback)
        return min(e.failures.items())[1].exitcode or 1
    return 0
