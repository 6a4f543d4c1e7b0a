"""Decoding fast: the engine's one-token pass, the weight layout it reads, the attention choice.

gpt.py reads as the lesson; each place it takes a faster route points here, so the tricks that
earn measured speed do not crowd the model itself: the attention written out (faster than
SDPA's kernel for short bf16 rows on a CPU; its weights are also what the inside view shows),
the weight layout for decoding on a CPU, and `DecodeStep`, the engine's one-token forward pass
on every device, which stores and reads the KV cache through the same `update` as gpt.py.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def textbook_attention_wins(q: torch.Tensor, attn_mask: torch.Tensor | None) -> bool:
    """Whether two matmuls and a softmax beat SDPA's fused kernel for this input.

    Measured with whole training steps (bench/bench_step.py): on a CPU with an explicit mask, in
    bf16 (1.3x faster steps on 2 AVX512-BF16 cores), where PyTorch's fused CPU kernel is slow on
    rows this short. Everywhere else SDPA wins or ties.
    """
    return q.device.type == "cpu" and attn_mask is not None and q.dtype == torch.bfloat16


def attention_weights(q, k, attn_mask: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) under `attn_mask` (True: may attend): each query's row of
    weights over the keys, summing to 1."""
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))
    return att.masked_fill(~attn_mask, float("-inf")).softmax(dim=-1)


def textbook_attention(q, k, v, attn_mask: torch.Tensor, dropout: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v, with `attn_mask` (True: may attend) and dropout."""
    att = attention_weights(q, k, attn_mask).to(v.dtype)
    if dropout > 0:
        att = F.dropout(att, dropout)
    return att @ v


def decode_layout(model: nn.Module) -> nn.Module:
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


def _matmul(linear: nn.Linear):
    """F.linear's own kernel on a (rows, features) input, with no module call around it."""
    weight = linear.weight.t()  # a view: the trainer's updates show through
    if linear.bias is None:
        return lambda x: torch.mm(x, weight)
    return lambda x, bias=linear.bias: torch.addmm(bias, x, weight)


class DecodeStep:
    """GPT.forward for one new token per row, in as few torch calls as it takes.

    Decoding a token is ~25 matrix-vector products; on a CPU each torch call costs microseconds
    of Python and dispatch whatever its size, and GPT.forward spends more calls on module
    plumbing and 3-D reshapes than on the products. Here each layer is the same arithmetic on
    (rows, d_model) tensors: two layer norms, four matmuls (query, key and value in one), the
    cache's `update` (gpt.py's own call: store this token's keys and values, get back every
    position's), and one attention call. The kernels and their inputs' values are gpt.py's, so
    the logits equal its own bit for bit. Weights are views of `model`'s, so a model that goes
    on training is decoded as it is now.
    """

    def __init__(self, model: nn.Module):
        self.model, cfg = model, model.cfg
        self.d_model, self.heads = cfg.d_model, cfg.n_head
        self.wte, self.wpe = model.wte.weight, model.wpe.weight

        def norm(ln: nn.LayerNorm):
            return lambda x: F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)

        self.layers = [
            (norm(b.ln_1), _matmul(b.attn.c_attn), _matmul(b.attn.c_proj))
            + (norm(b.ln_2), _matmul(b.mlp.c_fc), b.mlp.act.forward, _matmul(b.mlp.c_proj))
            for b in model.h
        ]
        self.ln_f, self.head = norm(model.ln_f), _matmul(model.lm_head)

    def __call__(self, tokens, positions, cache, attn_mask=None) -> torch.Tensor:
        """Logits (rows, vocab) for `tokens` (rows,) at `positions` (rows,), after
        `cache.decode(...)`; `attn_mask` (rows, 1, 1, width) where rows' lengths differ."""
        C, rows = self.d_model, tokens.shape[0]
        if self.model.training and self.model.cfg.dropout > 0:  # mid-training: gpt.py's own
            x = tokens[:, None], positions[:, None]
            return self.model(x[0], positions=x[1], attn_mask=attn_mask, cache=cache)[:, -1]
        x = F.embedding(tokens, self.wte) + F.embedding(positions, self.wpe)
        for layer, (ln_1, qkv_in, attn_out, ln_2, fc_in, act, fc_out) in enumerate(self.layers):
            # (rows, 3C) -> query, key, value (rows, heads, 1, head_dim): views, as gpt.py's.
            q, k, v = qkv_in(ln_1(x)).view(rows, 3, self.heads, 1, C // self.heads).unbind(1)
            keys, values = cache.update(layer, k, v)
            if textbook_attention_wins(q, attn_mask):
                y = textbook_attention(q, keys, values, attn_mask, 0.0)
            else:
                y = F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask)
            x = x + attn_out(y.view(rows, C))
            x = x + fc_out(act(fc_in(ln_2(x))))
        return self.head(self.ln_f(x))
