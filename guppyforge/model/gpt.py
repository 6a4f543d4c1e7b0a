"""The transformer: GPT-2 shaped, small, and readable top to bottom.

The layout (pre-LayerNorm blocks, learned positions, a head tied to the token embedding, biases
everywhere) is GPT-2's on purpose: every weight here maps one-to-one onto `transformers`'
GPT2LMHeadModel, so an exported model loads anywhere GPT-2 does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE = -100  # a target with this value adds nothing to the loss (cross_entropy's ignore_index)

# Names as transformers' GPT-2 config spells them; "gelu_tanh" is GPT-2's own ("gelu_new").
ACTIVATIONS = {
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "gelu": lambda: nn.GELU(),
    "relu": lambda: nn.ReLU(),
    "silu": lambda: nn.SiLU(),
}


@dataclass
class ModelConfig:
    """The shape of the model. `guppyforge presets` prints what each preset sets here."""

    vocab_size: int = 4096
    context: int = 128  # the longest sequence the model ever sees (learned positions stop here)
    n_layer: int = 6
    n_head: int = 6
    d_model: int = 384
    d_ff: int = 768
    activation: str = "gelu_tanh"
    dropout: float = 0.0  # our data is generated fresh and deduplicated; dropout mostly slows it

    def to_dict(self) -> dict:
        return asdict(self)


class KVCache:
    """Keys and values of every token seen so far, one pair per layer.

    Without it, each new token would recompute attention inputs for the whole prefix: decoding
    T tokens would cost O(T^2) projections instead of O(T).
    """

    def __init__(self, n_layer: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer

    def __len__(self) -> int:
        return self.length(0)

    def length(self, layer: int) -> int:
        k = self.keys[layer]
        return 0 if k is None else k.shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


def textbook_attention(q: torch.Tensor, attn_mask: torch.Tensor | None) -> bool:
    """Whether two matmuls and a softmax beat SDPA's fused kernel for this input.

    Measured with whole training steps (bench/bench_step.py): on a CPU with an explicit mask, in
    bf16 (1.3x faster steps on 2 AVX512-BF16 cores). Everywhere else SDPA wins or ties.
    """
    return q.device.type == "cpu" and attn_mask is not None and q.dtype == torch.bfloat16


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer  # which of the cache's per-layer slots holds this layer's keys
        assert cfg.d_model % cfg.n_head == 0, "d_model must divide evenly into heads"
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model)  # query, key, value in one matmul
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x, attn_mask=None, cache: KVCache | None = None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, heads, T, head_dim): each head attends on its own slice of channels.
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        past = 0
        if cache is not None:
            past = cache.length(self.layer)  # read before this layer adds the new tokens
            # The engine runs the prompt once on an empty cache, then one token at a time; one
            # new token may look at everything cached, so neither case needs a mask. Any other
            # shape (the ONNX graph's, whose lengths are symbolic) brings its own mask; it is
            # tested first so that the symbolic lengths are never compared.
            assert attn_mask is not None or past == 0 or T == 1, (
                "after a prefill, feed the cache one token at a time (or pass a mask)"
            )
            k, v = cache.update(self.layer, k, v)
        # The causal mask is what makes this a language model: a token may only look at tokens
        # before it, so predicting the next token is never cheating. With packed rows the mask
        # is block-diagonal too (built by the caller), so samples sharing a row never see each
        # other. SDPA picks the fastest kernel for the device (flash / memory-efficient / math).
        if textbook_attention(q, attn_mask):
            # Except where PyTorch's fused CPU kernel is slow on rows this short: there the
            # textbook form, two matmuls and a softmax, trains faster (see textbook_attention).
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))
            att = att.masked_fill(~attn_mask, float("-inf")).softmax(dim=-1).to(v.dtype)
            if self.training and self.dropout > 0:
                att = F.dropout(att, self.dropout)
            return self.c_proj((att @ v).transpose(1, 2).contiguous().view(B, T, C))
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=attn_mask is None and T > 1,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, cfg.d_ff)
        self.act = ACTIVATIONS[cfg.activation]()
        self.c_proj = nn.Linear(cfg.d_ff, cfg.d_model)

    def forward(self, x):
        return self.c_proj(self.act(self.c_fc(x)))


class Block(nn.Module):
    """Attention (tokens talk to each other), then an MLP (each token thinks on its own)."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, attn_mask=None, cache=None):
        # Pre-LayerNorm with residual additions: the residual path carries the signal straight
        # through, which keeps deep stacks trainable without careful learning-rate tuning.
        x = x + self.drop(self.attn(self.ln_1(x), attn_mask, cache))
        return x + self.drop(self.mlp(self.ln_2(x)))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)  # token -> vector
        self.wpe = nn.Embedding(cfg.context, cfg.d_model)  # position -> vector
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        # Weight tying: reading a token and writing it are the same vocabulary, so one matrix
        # serves both. At this size that saves ~18 % of the parameters and trains faster.
        self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                # GPT-2's scaled init: each block adds two residual branches, so shrink their
                # output layers to keep the residual stream's variance from growing with depth.
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Parameters counted once (the tied head shares the token embedding)."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(logits, loss) for the token ids `idx` (B, T).

        Without `targets`: logits (B, T, vocab) for every position, and no loss. With `targets`
        (B, T): the mean cross-entropy over the positions whose target is not IGNORE, and no
        logits (the head ran on the counted positions only, see `_loss`). `positions` restart
        at 0 for each sample packed into a row; `attn_mask` (B, 1, T, T), True where attention
        is allowed, keeps packed samples apart. With `cache`, `idx` holds only the new tokens
        and positions continue after the cached ones.
        """
        B, T = idx.shape
        if positions is None:
            start = len(cache) if cache is not None else 0
            positions = torch.arange(start, start + T, device=idx.device).unsqueeze(0)
        x = self.drop(self.wte(idx) + self.wpe(positions))
        for block in self.h:
            x = block(x, attn_mask, cache)
        x = self.ln_f(x)
        if targets is None:
            return self.lm_head(x), None
        return None, self._loss(x.view(-1, x.size(-1)), targets.view(-1))

    def _loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the counted targets, running the head only where it counts.

        The head (d_model x vocab, the largest matmul) is needed only where a target is
        counted: with the loss on replies, about half of the positions. Their number is rounded
        up to a multiple of 64 (with positions that count nothing): tensors whose size changes
        at every step fragment the CPU's heap, which cost 0.5 GiB of memory over a few hundred
        steps.
        """
        counted = targets != IGNORE
        n = int(counted.sum())
        keep = torch.sort(counted.logical_not().byte(), stable=True).indices
        keep = keep[: min(len(keep), -(-n // 64) * 64)]
        logits = self.lm_head(hidden[keep])
        total = F.cross_entropy(logits.float(), targets[keep], ignore_index=IGNORE, reduction="sum")
        return total / max(n, 1)  # a batch with nothing to count gives 0, not NaN
