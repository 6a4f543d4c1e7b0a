"""Training in several processes (DDP over gloo, started by `train --nproc`) trains the model that
one process trains with all their rows, stops and resumes as one process does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_data import write_toy_dataset

from guppyforge.errors import GuppyError
from guppyforge.model.gpt import GPT, PRESETS
from guppyforge.model.packing import batches, tokenize
from guppyforge.model.run import load_run
from guppyforge.model.tokenizer import chat_texts, train_tokenizer
from guppyforge.train.distributed import Group, empty_batch, shares
from guppyforge.train.loop import train

ROWS = 4  # per process; the one-process run takes 2 x ROWS
STEPS = ["--preset", "micro", "--max-steps", "20", "--eval-every", "10", "--precision", "fp32"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("data"), n_train=300, n_test=30)


def guppyforge(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "guppyforge", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def train_in_two(data_dir, out, *more: str) -> subprocess.CompletedProcess:
    args = ["train", data_dir, "--out", out, "-q", "--nproc", "2", "--batch-size", ROWS]
    done = guppyforge(*args, *STEPS, *more)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def two_processes(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "two"
    done = train_in_two(data_dir, out)
    assert "2 processes (DDP over gloo), each 4 of the rows" in done.stdout
    return out


def test_each_process_takes_its_rows_of_the_one_process_batch(data_dir):
    """Every other row of the batch one process would draw with twice the rows, and weights
    that make DDP's average of the two gradients the whole batch's."""
    from guppyforge.dataset.folder import load_splits

    split = load_splits(data_dir)["train"]
    samples = tokenize(split, train_tokenizer(chat_texts(split), 512), 128)
    alone = batches(samples, 128, 2 * ROWS, 0)
    ranks = [shares(samples, 128, ROWS, 0, "replies", Group(rank=r, world=2)) for r in (0, 1)]
    for _ in range(20):  # past an epoch's end (12 steps): the next epoch's plan too
        whole, position = next(alone)
        zero, one = next(ranks[0]), next(ranks[1])
        assert zero.position == one.position == position
        assert zero.tokens == one.tokens == whole.tokens
        assert zero.batch.tokens + one.batch.tokens == whole.tokens
        assert zero.weight + one.weight == pytest.approx(2.0)
        counted = [int((s.batch.targets != -100).sum()) for s in (zero, one)]
        assert zero.weight == pytest.approx(2 * counted[0] / sum(counted))


def test_a_process_without_rows_still_joins_the_step():
    model = GPT(PRESETS["micro"])
    batch = empty_batch(128)
    loss = model(batch.idx, batch.targets, batch.positions, batch.attn_mask)
    (loss * 0.0).backward()
    assert float(loss.detach()) == 0.0
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_two_processes_end_with_the_weights_of_one_with_both_batches(
    data_dir, two_processes, tmp_path
):
    one = train(
        data_dir,
        tmp_path / "one",
        preset="micro",
        batch_size=2 * ROWS,
        max_steps=20,
        eval_every=10,
        precision="fp32",
        progress=False,
    )
    a, b = load_file(one / "model.safetensors"), load_file(two_processes / "model.safetensors")
    d = PRESETS["micro"].d_model
    for name in a:
        diff = (a[name] - b[name]).abs()
        if name.endswith("attn.c_attn.bias"):
            # The keys' bias adds the same q.b to every score of a query, which softmax ignores:
            # its true gradient is 0, and what it gets is rounding noise, which Adam scales up
            # to steps of its own. It stays near its 0, has no effect, and is checked apart.
            keys = slice(d, 2 * d)
            assert a[name][keys].abs().max() < 1e-4 and b[name][keys].abs().max() < 1e-4
            diff[keys] = 0
        assert diff.max() <= 1e-5, name
    # What a user sees: the same replies' scores from both models, and the same losses logged.
    x = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))
    logits = [load_run(run).model(x) for run in (one, two_processes)]
    assert (logits[0] - logits[1]).abs().max() <= 1e-4
    losses = [load_run(run).config["results"]["final_eval_loss"] for run in (one, two_processes)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_a_ddp_run_stopped_at_10_and_resumed_to_20_equals_a_straight_20(
    data_dir, two_processes, tmp_path
):
    out = tmp_path / "stopped"
    done = train_in_two(data_dir, out, "--stop-after", "10")
    assert "stopped at step 10 of 20" in done.stdout and "--resume --nproc 2" in done.stdout
    with pytest.raises(GuppyError, match="trained in 2 processes, and this is 1"):
        train(data_dir, out, resume=True, progress=False)
    done = guppyforge("train", data_dir, "--out", out, "--resume", "-q", "--nproc", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming at step 10 of 20" in done.stdout
    a, b = load_file(two_processes / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # exactly: the same all-reduced steps
    assert (out / "metrics.jsonl").read_text().count("\n") == 2


def test_ctrl_c_stops_every_process_at_one_step_with_a_checkpoint(data_dir, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "guppyforge", "train", str(data_dir), "--out", str(out)]
    command += ["-q", "--nproc", "2", "--preset", "micro", "--max-steps", "100000"]
    # Its own session, as a terminal's job: Ctrl-C goes to the whole group, torchrun included.
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("training for step 0"):
            break
    time.sleep(2)  # a few steps in
    os.killpg(proc.pid, signal.SIGINT)
    output = "".join(lines) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output
    step = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert 0 < step < 100000
    assert f"stopped at step {step} of 100000 (interrupted); checkpoint saved." in output
    assert output.count("stopped at step") == 1  # process 0 speaks for both
    assert "Traceback" not in output


def test_nproc_refuses_a_run_folder_in_use_before_starting_processes(data_dir, two_processes):
    done = guppyforge("train", data_dir, "--out", two_processes, "--nproc", "2")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {two_processes}: already holds a run. Add --resume to continue it, or pick --out."
    ]
    assert np.isfinite(load_run(two_processes).config["results"]["final_eval_loss"])


def test_the_gpu_preset_trains_in_two_processes_on_cpus(data_dir, tmp_path):
    """guppy-40m is for GPUs; one step of it, in two gloo processes, checks its DDP run here."""
    out = tmp_path / "big"
    args = ["train", data_dir, "--out", out, "-q", "--nproc", "2", "--preset", "guppy-40m"]
    done = guppyforge(*args, "--batch-size", "1", "--max-steps", "1", "--precision", "fp32")
    assert done.returncode == 0, done.stdout + done.stderr
    run = load_run(out)
    assert run.model.num_params() == pytest.approx(40e6, rel=0.01)
    assert run.config["train"]["processes"] == 2 and run.config["model"]["context"] == 256
