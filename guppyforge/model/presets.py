"""Named model shapes, where their parameters live, and the one a CPU time budget picks."""

from __future__ import annotations

import math
from dataclasses import replace

from guppyforge.defaults import DEFAULT_PRESET
from guppyforge.errors import GuppyError
from guppyforge.files import text_table
from guppyforge.model.gpt import ModelConfig

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
    # curve. At 5 and 10 minutes on 2 fp32 cores tiny still beat it (README); longer is unmeasured.
    "small": ModelConfig(
        vocab_size=4096, context=128, n_layer=4, n_head=4, d_model=256, d_ff=1024
    ),
    # For tests: trains in seconds, learns little.
    "micro": ModelConfig(vocab_size=512, context=128, n_layer=2, n_head=2, d_model=64, d_ff=128),
}


# The shape a time budget on CPU cores trains the best character with, when --preset is not
# given: (minutes up to, preset), from the quality-per-minute curve on 2 fp32 cores
# (bench/bench_character.py, fp32: tiny won at 2, 5 and 10 minutes against small and guppy-9m).
CPU_BUDGET_SHAPES = ((10, "tiny"), (math.inf, DEFAULT_PRESET))


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
