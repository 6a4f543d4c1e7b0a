"""The update rules: which optimizer moves which weights, and Muon's fp32 orthogonalisation."""

from __future__ import annotations

import pytest
import torch
from test_train import FAST, losses

from guppyforge.model.gpt import GPT, PRESETS
from guppyforge.train.config import TrainOptions
from guppyforge.train.loop import train
from guppyforge.train.optim import Fp32Muon, make_optimizer


def test_muon_moves_the_blocks_matrices_and_adamw_everything_else():
    model = GPT(PRESETS["micro"])
    muon, adamw = make_optimizer(
        model, TrainOptions(optimizer="muon"), torch.device("cpu")
    ).optimizers
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = [names[id(p)] for g in muon.param_groups for p in g["params"]]
    in_adamw = [names[id(p)] for g in adamw.param_groups for p in g["params"]]
    assert in_muon and all(n.startswith("h.") and n.endswith("weight") for n in in_muon)
    assert all(model.get_parameter(n).dim() == 2 for n in in_muon)
    assert "wte.weight" in in_adamw and not set(in_muon) & set(in_adamw)
    assert sorted(in_muon + in_adamw) == sorted(names.values())  # every weight, exactly once


def pair(shape, steps: int = 4):
    """The same weights after `steps` updates by torch's Muon and by Fp32Muon."""
    torch.manual_seed(0)
    start = torch.randn(shape) * 0.02
    grads = [torch.randn(shape) for _ in range(steps)]
    out = []
    for cls in (torch.optim.Muon, Fp32Muon):
        w = torch.nn.Parameter(start.clone())
        opt = cls([w], lr=3e-3, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
        for g in grads:
            w.grad = g.clone()
            opt.step()
        out.append((w.detach() - start, opt))
    return out


def test_fp32_muon_makes_torchs_update_without_bf16():
    for shape in [(96, 32), (32, 96), (48, 48)]:  # tall, wide (transposed inside), square
        (theirs, _), (ours, _) = pair(shape)
        cosine = torch.nn.functional.cosine_similarity(theirs.flatten(), ours.flatten(), dim=0)
        assert cosine > 0.999, shape  # bf16 rounding is the only difference
        assert ours.norm() / theirs.norm() == pytest.approx(1, abs=0.01)


def test_fp32_muon_checkpoints_resume_with_either_class():
    (_, theirs), (_, ours) = pair((64, 16), steps=2)
    for source, target_cls in ((ours, torch.optim.Muon), (theirs, Fp32Muon)):
        w = torch.nn.Parameter(torch.zeros(64, 16))
        target = target_cls([w], lr=3e-3, adjust_lr_fn="match_rms_adamw")
        target.load_state_dict(source.state_dict())
        buf = next(iter(target.state.values()))["momentum_buffer"]
        assert torch.equal(buf, next(iter(source.state.values()))["momentum_buffer"])


def test_training_with_muon_learns(tmp_path):
    from test_data import write_toy_dataset

    data = write_toy_dataset(tmp_path / "data", n_train=200, n_test=20)
    run = train(data, tmp_path / "run", max_steps=16, optimizer="muon", **FAST)
    curve = [loss for _, loss in losses(run)]
    assert curve[-1] < curve[0] - 0.5
    assert (run / "model.safetensors").is_file()
