"""The model as training uses it: packed rows, the head run on counted positions only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from guppyforge.data import IGNORE, Batch, loss_fn
from guppyforge.model import GPT, ModelConfig

CFG = ModelConfig(vocab_size=300, context=32, n_layer=2, n_head=2, d_model=32, d_ff=64)


def packed_batch() -> Batch:
    """Two rows; the first packs conversations of 12 and 14 tokens, then 6 pads."""
    torch.manual_seed(0)
    idx = torch.randint(3, 300, (2, 32))
    segment = torch.tensor([[0] * 12 + [1] * 14 + [-1] * 6, [0] * 20 + [-1] * 12])
    positions = torch.cat([torch.arange(12), torch.arange(14), torch.zeros(6, dtype=int)])
    positions = torch.stack([positions, torch.cat([torch.arange(20), torch.zeros(12, dtype=int)])])
    mask = (segment[:, :, None] == segment[:, None, :]) & torch.ones(32, 32, dtype=bool).tril()
    targets = torch.where(torch.rand(2, 32) < 0.5, idx.roll(-1, 1), IGNORE)
    targets[segment < 0] = IGNORE
    return Batch(idx, targets, positions, mask.unsqueeze(1), tokens=46)


def test_bf16_cpu_attention_matches_sdpa():
    """The explicit attention used for bf16 on CPUs computes what SDPA computes."""
    model, batch = GPT(CFG).eval(), packed_batch()
    with torch.no_grad():
        fp32 = model(batch.idx, positions=batch.positions, attn_mask=batch.attn_mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(batch.idx, positions=batch.positions, attn_mask=batch.attn_mask)
    assert not torch.isnan(bf16).any()
    assert (bf16.float() - fp32).abs().max() < 0.05  # bf16 keeps ~3 significant digits


def test_the_head_can_run_on_counted_positions_only():
    model, batch = GPT(CFG), packed_batch()
    logits = model(batch.idx, positions=batch.positions, attn_mask=batch.attn_mask)
    hidden = model(batch.idx, positions=batch.positions, attn_mask=batch.attn_mask, head=False)
    assert hidden.shape == (2, 32, CFG.d_model)
    assert torch.allclose(model.lm_head(hidden), logits, atol=1e-6)
    full = F.cross_entropy(logits.view(-1, CFG.vocab_size), batch.targets.view(-1))
    assert torch.allclose(loss_fn(model, batch), full, atol=1e-6)


def test_a_batch_with_nothing_to_count_has_zero_loss():
    model, batch = GPT(CFG), packed_batch()
    batch.targets[:] = IGNORE
    assert loss_fn(model, batch).item() == 0.0
