"""Precision per device, and the fp16 + GradScaler step, checked on a CPU.

No GPU is needed: the device queries are replaced, and the fp16 path runs on the CPU, where
torch offers the same autocast and GradScaler machinery that CUDA uses.
"""

from __future__ import annotations

import pytest
import torch

import guppyforge.train.precision as precision_module
from guppyforge.errors import GuppyError
from guppyforge.model.gpt import GPT, PRESETS
from guppyforge.model.packing import collate, pack
from guppyforge.train.config import TrainOptions
from guppyforge.train.optim import make_optimizer, train_step
from guppyforge.train.precision import Precision, cpu_has_native_bf16, pick_precision


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((7, 5), "fp16"), ((7, 0), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")],
)
def test_cuda_picks_fp16_below_ampere_and_bf16_from_it(monkeypatch, capability, expected):
    monkeypatch.setattr(precision_module, "cuda_capability", lambda device: capability)
    p = pick_precision(torch.device("cuda"))
    assert p.name == expected and p.device_type == "cuda"
    assert p.needs_scaler == (expected == "fp16")  # a T4 (7.5) gets fp16 with loss scaling


def test_cpu_uses_bf16_only_with_native_support(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    assert cpu_has_native_bf16(info)
    info.write_text("flags\t\t: fpu sse avx2 avx512f\n")
    assert not cpu_has_native_bf16(info)
    assert not cpu_has_native_bf16(tmp_path / "missing")  # not Linux: fp32, always correct
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda n=native: n)
        assert pick_precision(torch.device("cpu")).name == expected
    assert pick_precision(torch.device("mps")).name == "fp32"


def test_an_explicit_choice_wins_and_a_bad_one_is_refused():
    assert pick_precision(torch.device("cpu"), "fp16").name == "fp16"
    assert pick_precision(torch.device("cpu"), "fp32").autocast() is not None
    with pytest.raises(GuppyError, match="--precision: unknown 'fp8'"):
        pick_precision(torch.device("cpu"), "fp8")


def _micro_setup():
    torch.manual_seed(0)
    model = GPT(PRESETS["micro"])
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(10, 40, (24,), generator=gen).numpy()
    from guppyforge.model.packing import Samples

    tokens = torch.randint(3, 512, (int(lengths.sum()),), generator=gen).numpy()
    starts = lengths.cumsum() - lengths
    samples = Samples(tokens, (tokens % 2).astype("int8"), starts, lengths, too_long=0)
    rows = pack(lengths, torch.arange(24).numpy(), 128)
    return model, collate(samples, rows, 128)


def test_fp16_with_grad_scaler_trains(tmp_path):
    """The CUDA < 8.0 path (fp16 autocast + GradScaler), run on the CPU."""
    model, batch = _micro_setup()
    fp16 = Precision("fp16", "cpu", "test")
    scaler = fp16.scaler()
    assert scaler.is_enabled() and scaler.get_scale() == 2.0**16
    optimizer = make_optimizer(model, TrainOptions(lr=3e-3), torch.device("cpu"))
    losses = [float(train_step(model, batch, optimizer, scaler, fp16, 1.0, 1.0)) for _ in range(8)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    # The scaler's state is part of a checkpoint, so resume continues with the same scale.
    assert set(scaler.state_dict()) >= {"scale", "_growth_tracker"}


def test_fp16_overflow_skips_the_step_and_halves_the_scale():
    model, batch = _micro_setup()
    fp16 = Precision("fp16", "cpu", "test")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100)  # the scaled loss cannot fit fp16
    optimizer = make_optimizer(model, TrainOptions(), torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_step(model, batch, optimizer, scaler, fp16, 1.0, 1.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert scaler.get_scale() == 2.0**99
    assert all(p.grad is None for p in model.parameters())  # ready for the next step


def test_bf16_and_fp32_steps_need_no_scaler():
    model, batch = _micro_setup()
    for name in ("bf16", "fp32"):
        p = Precision(name, "cpu", "test")
        assert not p.scaler().is_enabled()
        optimizer = make_optimizer(model, TrainOptions(), torch.device("cpu"))
        loss = train_step(model, batch, optimizer, p.scaler(), p, 1.0, 1.0)
        assert torch.isfinite(loss)


def test_fp16_runs_resume_exactly_with_the_scaler_state(tmp_path):
    from test_data import write_toy_dataset
    from test_train import FAST, losses

    from guppyforge.train.loop import train

    data = write_toy_dataset(tmp_path / "data", n_train=120, n_test=10)
    options = dict(FAST, precision="fp16", max_steps=8, eval_every=100)
    straight = train(data, tmp_path / "straight", **options)
    train(data, tmp_path / "stopped", stop_after=4, **options)
    state = torch.load(tmp_path / "stopped/checkpoints/last.pt", weights_only=True)
    assert state["scaler"]["scale"] == 2.0**16 and state["step"] == 4
    stopped = train(data, tmp_path / "stopped", resume=True, progress=False)
    assert losses(stopped) == losses(straight)
