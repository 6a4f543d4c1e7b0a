"""Named model shapes, and the arithmetic of where their parameters live."""

from __future__ import annotations

from dataclasses import replace

from guppyforge.model import ModelConfig

PRESETS: dict[str, ModelConfig] = {
    # GuppyLM's shape: the mission's ~9M-parameter model, trainable in minutes on a T4.
    "guppy-9m": ModelConfig(
        vocab_size=4096, context=128, n_layer=6, n_head=6, d_model=384, d_ff=768
    ),
    # Same shape with twice the context, for multi-turn datasets (`generate --turns 2-4`).
    "guppy-9m-long": ModelConfig(
        vocab_size=4096, context=256, n_layer=6, n_head=6, d_model=384, d_ff=768
    ),
    # Small enough to train a usable character on 2 CPU cores in a few minutes.
    "tiny": ModelConfig(vocab_size=2048, context=128, n_layer=4, n_head=4, d_model=192, d_ff=576),
    # For tests: trains in seconds, learns little.
    "micro": ModelConfig(vocab_size=512, context=128, n_layer=2, n_head=2, d_model=64, d_ff=128),
}

DEFAULT_PRESET = "guppy-9m"


def get_preset(name: str, **overrides) -> ModelConfig:
    """A copy of a preset, with any fields overridden."""
    from guppyforge.errors import GuppyError

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
