"""The loss curve: train and eval loss against steps, written as a PNG."""

from __future__ import annotations

from pathlib import Path

from guppyforge.files import atomic_path


def plot_losses(records: list[dict], path: Path, title: str = "") -> None:
    """Draw `train_loss` and `eval_loss` from metrics records into `path` (atomically)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed: training often runs on a server
    import matplotlib.pyplot as plt

    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="tab:blue", lw=1.2)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss", color="tab:orange", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
