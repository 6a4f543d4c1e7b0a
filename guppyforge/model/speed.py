"""CPU speed paths: where the plain form of gpt.py is slower on a CPU than it needs to be.

gpt.py reads as the lesson; each place it takes a faster route on a CPU points here, so the
tricks that earn measured speed do not crowd the model itself.
"""

from __future__ import annotations

import copy
import math

import torch


def textbook_attention_wins(q: torch.Tensor, attn_mask: torch.Tensor | None) -> bool:
    """Whether two matmuls and a softmax beat SDPA's fused kernel for this input.

    Measured with whole training steps (bench/bench_step.py): on a CPU with an explicit mask, in
    bf16 (1.3x faster steps on 2 AVX512-BF16 cores), where PyTorch's fused CPU kernel is slow on
    rows this short. Everywhere else SDPA wins or ties.
    """
    return q.device.type == "cpu" and attn_mask is not None and q.dtype == torch.bfloat16


def textbook_attention(q, k, v, attn_mask: torch.Tensor, dropout: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v, with `attn_mask` (True: may attend) and dropout."""
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))
    att = att.masked_fill(~attn_mask, float("-inf")).softmax(dim=-1).to(v.dtype)
    if dropout > 0:
        att = torch.nn.functional.dropout(att, dropout)
    return att @ v


def decode_layout(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` with each weight matrix stored input-major (GPT-2's own Conv1D layout).

    Decoding one token multiplies a single vector by every weight matrix, so its speed is how
    fast the weights stream from memory. Stored input-major, the CPU matmul kernel reads them
    in long contiguous runs (1.3x faster per token on a 2-core CPU). Values and shapes are
    unchanged; logits move only by float rounding (another summation order). A copy, so the
    model its caller holds (and may go on training or saving) is left as it was. Off the CPU
    the layout gains nothing, and the model itself is returned.
    """
    if next(model.parameters()).device.type != "cpu":
        return model
    model = copy.deepcopy(model).eval()  # for decoding only: no dropout
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.data = p.data.t().contiguous().t()
    return model
