"""The model as training uses it: packed rows, the head run on counted positions only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from guppyforge.model.engine import KVCache
from guppyforge.model.gpt import GPT, IGNORE, ModelConfig
from guppyforge.model.packing import Batch

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


def test_the_loss_runs_the_head_on_counted_positions_only_and_equals_the_full_loss():
    model, batch = GPT(CFG), packed_batch()
    logits = model(batch.idx, positions=batch.positions, attn_mask=batch.attn_mask)
    assert logits.shape == (2, 32, CFG.vocab_size)
    loss = model(batch.idx, batch.targets, batch.positions, batch.attn_mask)
    assert loss.dim() == 0
    full = F.cross_entropy(logits.view(-1, CFG.vocab_size), batch.targets.view(-1))
    assert torch.allclose(loss, full, atol=1e-6)


def test_a_batch_with_nothing_to_count_has_zero_loss():
    model, batch = GPT(CFG), packed_batch()
    batch.targets[:] = IGNORE
    assert model(batch.idx, batch.targets, batch.positions, batch.attn_mask).item() == 0.0


def test_kv_cache_decoding_gives_the_logits_of_a_full_forward_pass():
    """Prefill a prompt, then feed one token at a time: every step's logits equal those of the
    whole sequence run at once (what the engine relies on to decode in O(T))."""
    torch.manual_seed(1)
    model = GPT(CFG).eval()
    seq = torch.randint(3, 300, (1, 20))
    with torch.no_grad():
        full = model(seq)[0]
        for prompt in (1, 7, 19):
            cache = KVCache(CFG, rows=1, like=model.wte.weight)
            cache.prefill([0])
            steps = [model(seq[:, :prompt], cache=cache)[0]]
            for t in range(prompt, 20):
                cache.decode([t])
                steps.append(
                    model(seq[:, t : t + 1], positions=torch.tensor([[t]]), cache=cache)[0]
                )
            torch.testing.assert_close(torch.cat(steps), full, rtol=1e-5, atol=1e-5)


def test_the_engines_decode_step_equals_the_models_forward_bit_for_bit():
    """DecodeStep (the engine's one-token pass) is gpt.py's arithmetic in fewer calls: same
    logits, to the bit, for one row and for rows at different positions (masked)."""
    from guppyforge.model.decode import DecodeStep, decode_layout

    torch.manual_seed(2)
    model = decode_layout(GPT(CFG))
    step = DecodeStep(model)
    seqs = torch.randint(3, 300, (3, 20))
    with torch.inference_mode():
        for lengths in ([9], [9, 9, 9], [4, 11, 7]):
            rows = len(lengths)
            ours, theirs = (KVCache(CFG, rows=rows, like=model.wte.weight) for _ in range(2))
            for cache in (ours, theirs):
                for r, n in enumerate(lengths):
                    cache.prefill([r])
                    model(seqs[r : r + 1, :n], cache=cache)
            for t in range(6):
                positions = [n + t for n in lengths]
                tokens = seqs[torch.arange(rows), torch.tensor(positions)]
                mask = None
                if len(set(positions)) > 1:
                    seen = torch.arange(max(positions) + 1)
                    mask = (seen[None, :] <= torch.tensor(positions)[:, None])[:, None, None, :]
                at = torch.tensor(positions)
                ours.decode(positions)
                fast = step(tokens, at, ours, mask)
                theirs.decode(positions)
                plain = model(tokens[:, None], positions=at[:, None], attn_mask=mask, cache=theirs)
                assert torch.equal(fast, plain[:, -1])
            cached = zip(ours.keys + ours.values, theirs.keys + theirs.values, strict=True)
            assert all(torch.equal(a, b) for a, b in cached)
