"""The transformer: GPT-2 shaped, small, and readable top to bottom.

The layout (pre-LayerNorm blocks, learned positions, a head tied to the token embedding, biases
everywhere) is GPT-2's on purpose: every weight here maps one-to-one onto `transformers`'
GPT2LMHeadModel, so an exported model loads anywhere GPT-2 does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

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


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.d_model % cfg.n_head == 0, "d_model must divide evenly into heads"
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model)  # query, key, value in one matmul
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x, attn_mask=None, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, heads, T, head_dim): each head attends on its own slice of channels.
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        past = 0
        if cache is not None:
            past = cache.length(layer)  # read before this layer adds the new tokens
            k, v = cache.update(layer, k, v)
        if attn_mask is None and past > 0 and T > 1:
            # New tokens after a cached prefix: each sees the whole prefix and the new tokens
            # before it. (One new token sees everything, so it needs no mask at all.)
            rows = torch.arange(T, device=x.device)[:, None] + past
            attn_mask = rows >= torch.arange(past + T, device=x.device)[None, :]
        # The causal mask is what makes this a language model: a token may only look at tokens
        # before it, so predicting the next token is never cheating. With packed rows the mask
        # is block-diagonal too (built by the caller), so samples sharing a row never see each
        # other. SDPA picks the fastest kernel for the device (flash / memory-efficient / math).
        if q.device.type == "cpu" and q.dtype == torch.bfloat16 and attn_mask is not None:
            # Except one case: PyTorch's fused CPU kernel is slow in bf16 on rows this short;
            # the textbook form, two matmuls and a softmax, trains ~1.3x faster there (measured
            # on 2 AVX512-BF16 cores, whole training steps).
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
            is_causal=attn_mask is None and past == 0 and T > 1,
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

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, attn_mask=None, cache=None, layer=0):
        # Pre-LayerNorm with residual additions: the residual path carries the signal straight
        # through, which keeps deep stacks trainable without careful learning-rate tuning.
        x = x + self.drop(self.attn(self.ln_1(x), attn_mask, cache, layer))
        return x + self.drop(self.mlp(self.ln_2(x)))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)  # token -> vector
        self.wpe = nn.Embedding(cfg.context, cfg.d_model)  # position -> vector
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
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
        self, idx, positions=None, attn_mask=None, cache: KVCache | None = None, head: bool = True
    ):
        """Logits for every position of `idx` (B, T).

        `positions` restart at 0 for each sample packed into a row; `attn_mask` (B, 1, T, T),
        True where attention is allowed, keeps packed samples apart. With `cache`, `idx` holds
        only the new tokens and positions continue after the cached ones. With `head=False`,
        the final hidden states (B, T, d_model) instead: a loss counted on some positions only
        can then run the vocabulary-sized head on just those.
        """
        B, T = idx.shape
        if positions is None:
            start = len(cache) if cache is not None else 0
            positions = torch.arange(start, start + T, device=idx.device).unsqueeze(0)
        x = self.drop(self.wte(idx) + self.wpe(positions))
        for i, block in enumerate(self.h):
            x = block(x, attn_mask, cache, i)
        x = self.ln_f(x)
        return self.lm_head(x) if head else x

    @torch.inference_mode()  # like no_grad, and skips autograd bookkeeping entirely
    def generate(
        self,
        ids: list[int],
        max_new_tokens: int = 64,
        temperature: float = 0.7,
        top_k: int | None = 50,
        top_p: float = 1.0,
        stop_ids: tuple[int, ...] = (),
        generator: torch.Generator | None = None,
    ) -> Iterator[int]:
        """Yield new token ids one at a time (so callers can stream), using the KV cache.

        The prompt is run once (prefill); after that each step feeds only the newest token.
        Stops at a token in `stop_ids` (not yielded) or at the context limit.
        """
        device = self.wte.weight.device
        cache = KVCache(self.cfg.n_layer)
        x = torch.tensor([ids[-self.cfg.context :]], device=device)
        for _ in range(max_new_tokens):
            if len(cache) + x.shape[1] > self.cfg.context:
                return  # learned positions end here: the model has never seen a later position
            logits = self(x, cache=cache)[0, -1]
            token = sample_next(logits, temperature, top_k, top_p, generator)
            if token in stop_ids:
                return
            yield token
            x = torch.tensor([[token]], device=device)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.7,
    top_k: int | None = 50,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> int:
    """Pick the next token from one position's logits.

    Temperature divides the logits before the softmax: below 1 it sharpens the distribution
    (the likely tokens get likelier), above 1 it flattens it. Temperature 0 means "always take
    the most likely token" (greedy), which makes a reply reproducible.
    """
    if temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits.float() / temperature
    k = top_k if top_k and 0 < top_k < logits.numel() else logits.numel()
    # Keep only the k most likely tokens: cuts off the long tail of nonsense. topk returns them
    # sorted, so the rest of the work is on k numbers rather than the whole vocabulary.
    values, ids = torch.topk(logits, k)
    probs = F.softmax(values, dim=-1)
    if top_p < 1.0:
        # Nucleus sampling: keep the smallest set of tokens whose probabilities add up to top_p.
        probs = probs.masked_fill(probs.cumsum(0) - probs > top_p, 0.0)
    return int(ids[torch.multinomial(probs, 1, generator=generator)])
