"""The transformer: GPT-2 shaped, small, and readable top to bottom, with its named shapes.

The layout (pre-LayerNorm blocks, learned positions, a head tied to the token embedding, biases
everywhere) is GPT-2's on purpose: every weight here maps one-to-one onto `transformers`'
GPT2LMHeadModel, so an exported model loads anywhere GPT-2 does.

Read in this order: the shape (ModelConfig) and the presets that name shapes; the model,
block by block, ending with `GPT.generate`, the plain reference every fast decoding path must
equal; then which preset a CPU time budget picks and where a preset's parameters live.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from guppyforge.defaults import DEFAULT_PRESET
from guppyforge.errors import GuppyError
from guppyforge.files import text_table
from guppyforge.model.decode import textbook_attention, textbook_attention_wins

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


# The shapes `--preset` names; `guppyforge presets` prints them with their parameter counts.
PRESETS: dict[str, ModelConfig] = {
    # GuppyLM's shape: the mission's ~9M-parameter model, trainable in minutes on a T4.
    "guppy-9m": ModelConfig(
        vocab_size=4096, context=128, n_layer=6, n_head=6, d_model=384, d_ff=768
    ),
    # Same shape with twice the context, for multi-turn datasets (`generate --turns 2-4`).
    "guppy-9m-long": ModelConfig(
        vocab_size=4096, context=256, n_layer=6, n_head=6, d_model=384, d_ff=768
    ),
    # For GPUs, one or many (`train --nproc N`): GPT-2's FFN of 4 x d_model, 512 wide (guppy-9m:
    # 384), twice the layers and the context, for multi-turn characters. 38M of its 40M parameters
    # are in the blocks' matrices, so a step is mostly large matmuls: what tensor cores are for,
    # and far too slow for a few CPU minutes (bench/bench_gpu.py --preset guppy-40m, on a GPU).
    "guppy-40m": ModelConfig(
        vocab_size=4096, context=256, n_layer=12, n_head=8, d_model=512, d_ff=2048
    ),
    # Small enough to train a convincing character on 2 CPU cores in four minutes: on a few
    # minutes of CPU, more steps of a smaller model beat fewer of a bigger one (bench_train.py).
    "tiny": ModelConfig(vocab_size=2048, context=128, n_layer=4, n_head=4, d_model=128, d_ff=512),
    # Between tiny and guppy-9m, four times tiny's blocks: the middle of the quality-per-minute
    # curve. At 5 and 10 minutes on 2 fp32 cores tiny still beat it; at 20 it won (README).
    "small": ModelConfig(vocab_size=4096, context=128, n_layer=4, n_head=4, d_model=256, d_ff=1024),
    # For tests: trains in seconds, learns little.
    "micro": ModelConfig(vocab_size=512, context=128, n_layer=2, n_head=2, d_model=64, d_ff=128),
}


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer  # which of the cache's per-layer slots holds this layer's keys
        assert cfg.d_model % cfg.n_head == 0, "d_model must divide evenly into heads"
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model)  # query, key, value in one matmul
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x, attn_mask=None, cache=None):
        B, T, C = x.shape
        q, k, v = self.heads(self.c_attn(x))
        if cache is not None:
            # The engine's KV cache stores the new keys and values and gives back what this
            # layer attends to: a prompt's own, or everything its reply has cached so far.
            k, v = cache.update(self.layer, k, v)
        # The causal mask is what makes this a language model: a token may only look at tokens
        # before it, so predicting the next token is never cheating. With packed rows the mask
        # is block-diagonal too (built by the caller), so samples sharing a row never see each
        # other. SDPA picks the fastest kernel for the device (flash / memory-efficient / math).
        dropout = self.dropout if self.training else 0.0
        if textbook_attention_wins(q, attn_mask):  # a CPU speed path: see model/decode.py
            y = textbook_attention(q, k, v, attn_mask, dropout)
        else:
            # One new token may look at everything cached, so it needs no mask.
            causal = attn_mask is None and T > 1
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=dropout, is_causal=causal
            )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)

    def heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query, key and value (B, heads, T, head_dim) from the fused projection (B, T, 3C):
        each head attends on its own slice of channels."""
        B, T, three_c = qkv.shape
        C = three_c // 3
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head) for t in qkv.split(C, dim=2))
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


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
        cache=None,
    ) -> torch.Tensor:
        """The logits (B, T, vocab) for the token ids `idx` (B, T); given `targets`, the loss.

        With `targets` (B, T): the mean cross-entropy over the positions whose target is not
        IGNORE (the head runs on the counted positions only, see `_loss`). `positions` restart
        at 0 for each sample packed into a row; `attn_mask` (B, 1, T, T), True where attention
        is allowed, keeps packed samples apart. With `cache` (the engine's KVCache), `idx`
        holds only the new tokens and `positions` say where they go.
        """
        x = self.trunk(idx, positions, attn_mask, cache)
        if targets is None:
            return self.lm_head(x)
        return self._loss(x.view(-1, x.size(-1)), targets.view(-1))

    def trunk(self, idx, positions=None, attn_mask=None, cache=None) -> torch.Tensor:
        """Everything but the head: the final hidden states (B, T, d_model) (arguments as
        `forward`). The engine runs the head only where it needs logits."""
        if positions is None:
            positions = torch.arange(idx.shape[1], device=idx.device).unsqueeze(0)
        x = self.drop(self.wte(idx) + self.wpe(positions))
        for block in self.h:
            x = block(x, attn_mask, cache)
        return self.ln_f(x)

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

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature=1.0, top_k=None) -> torch.Tensor:
        """`idx` (B, T) with `max_new_tokens` more token ids after it, the plain way.

        No cache: the whole sequence runs again for every token. Slow on purpose: it states what
        every fast path (the engine's KV cache, its batches, its decode step) must equal.
        Temperature 0 takes the likeliest token (greedy), as the engine does. No end token
        stops it: a caller cuts the reply where the chat format closes it.
        """
        for _ in range(max_new_tokens):
            # Learned positions stop at the context: past it, the model sees the latest tokens.
            logits = self(idx[:, -self.cfg.context :])[:, -1, :]
            if temperature == 0:
                idx_next = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    # Only the k likeliest tokens may be drawn: the rest get probability 0.
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                idx_next = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx


# --- Named shapes: the one a CPU budget picks, and where their parameters live.

# The shape a time budget on CPU cores trains the best character with, when --preset is not
# given: (minutes up to, preset), from the quality-per-minute curve on 2 fp32 cores
# (bench/bench_character.py, fp32: tiny won at 2, 5 and 10 minutes against small and guppy-9m;
# at 20, small won: tiny's loss stops falling). Past the measured range, the default.
CPU_BUDGET_SHAPES = ((10, "tiny"), (20, "small"), (math.inf, DEFAULT_PRESET))


def preset_for(max_minutes: float | None, device: str) -> tuple[str, str]:
    """The preset `train` builds when none is given, and why, for the line it prints."""
    if device != "cpu" or max_minutes is None:
        return DEFAULT_PRESET, f"the default{'' if max_minutes is None else ' off a CPU'}"
    name = next(name for limit, name in CPU_BUDGET_SHAPES if max_minutes <= limit)
    return name, f"the shape that trains the best character in {max_minutes:g} minutes on a CPU"


def get_preset(name: str, **overrides) -> ModelConfig:
    """A copy of a preset, with any fields overridden."""
    if name not in PRESETS:
        raise GuppyError(f"--preset: unknown preset '{name}'. Choose one of: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """Parameters by where they live, computed from the shape alone (no model is built).

    Embeddings: one vector per token and per position (the output head reuses the token table).
    Each block: attention's q,k,v and output projections (4 * d^2 weights + 4 * d biases), the
    MLP's two layers (2 * d * ff weights + ff + d biases), and two LayerNorms (2 * 2 * d).
    """
    d, ff = cfg.d_model, cfg.d_ff
    attention = 4 * d * d + 4 * d
    mlp = 2 * d * ff + ff + d
    norms = 2 * 2 * d
    per_block = attention + mlp + norms
    embeddings = cfg.vocab_size * d + cfg.context * d
    blocks = cfg.n_layer * per_block
    final_norm = 2 * d
    return {
        "token_embeddings": cfg.vocab_size * d,
        "position_embeddings": cfg.context * d,
        "embeddings": embeddings,
        "per_block": per_block,
        "blocks": blocks,
        "final_norm": final_norm,
        "total": embeddings + blocks + final_norm,
    }


def _m(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def presets_table() -> str:
    """One row per preset, then the default preset's parameter count worked out by hand."""
    head = ("preset", "layers", "d_model", "heads", "FFN", "context", "vocab")
    head += ("embeddings", "blocks", "total")
    rows = [head]
    for name, cfg in PRESETS.items():
        p = param_counts(cfg)
        shape = (cfg.n_layer, cfg.d_model, cfg.n_head, cfg.d_ff, cfg.context, cfg.vocab_size)
        blocks = f"{cfg.n_layer} x {_m(p['per_block'])} = {_m(p['blocks'])}"
        rows.append((name, *map(str, shape), _m(p["embeddings"]), blocks, _m(p["total"])))
    return text_table(rows) + "\n\n" + explain(DEFAULT_PRESET)


def explain(name: str) -> str:
    """Where one preset's parameters live, as the sums a learner can check."""
    cfg, p = PRESETS[name], param_counts(PRESETS[name])
    d, ff, V, T, L = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.context, cfg.n_layer
    attention, mlp = 4 * d * d + 4 * d, 2 * d * ff + ff + d
    parts = [
        (f"embeddings: ({V:,} tokens + {T} positions) x {d}", p["embeddings"]),
        (f"  per block, attention: q,k,v,out 4 x {d}^2 + 4 x {d} biases", attention),
        (f"  per block, MLP: 2 x {d} x {ff} + {ff} + {d} biases", mlp),
        (f"  per block, 2 LayerNorms: 2 x 2 x {d}", 4 * d),
        (f"blocks: {L} x {p['per_block']:,}", p["blocks"]),
        (f"final LayerNorm: 2 x {d}", p["final_norm"]),
        ("total (the output head reuses the token embedding)", p["total"]),
    ]
    width = max(len(text) for text, _ in parts)
    lines = [f"where {name}'s parameters live:"]
    lines += [f"  {text.ljust(width)}  {n:>10,}" for text, n in parts]
    return "\n".join(lines)
