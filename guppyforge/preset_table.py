"""`guppyforge presets`: every preset's shape, and the arithmetic of where its parameters live."""

from __future__ import annotations

from guppyforge.presets import DEFAULT_PRESET, PRESETS, param_counts


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
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    return "\n".join(lines) + "\n\n" + explain(DEFAULT_PRESET)


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
