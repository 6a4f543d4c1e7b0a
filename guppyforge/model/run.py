"""A run folder on disk: what `train` writes and what chat, eval, export and serve read.

RUN/config.json         {"model": ModelConfig, "train": ..., "dataset": ..., "persona": ...}
RUN/model.safetensors   the weights, in this package's names (see gpt.py)
RUN/tokenizer.json      plus tokenizer_config.json with the chat template
RUN/persona.yaml        the persona the data came from (eval's default probes)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from guppyforge.defaults import DEVICES
from guppyforge.errors import GuppyError
from guppyforge.files import atomic_path
from guppyforge.model.gpt import GPT, ModelConfig
from guppyforge.model.tokenizer import load_tokenizer


@dataclass
class Run:
    """A trained model ready to use."""

    path: Path
    model: GPT
    tokenizer: Tokenizer
    config: dict  # the whole config.json

    @property
    def persona_path(self) -> Path:
        return self.path / "persona.yaml"


def save_weights(model: GPT, path: Path) -> None:
    """Write model.safetensors atomically, so a crash never leaves half a file."""
    # The head is tied to the token embedding: store the matrix once (safetensors refuses
    # tensors that share memory) and tie it again on load.
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    state.pop("lm_head.weight", None)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})


def load_run(run_dir: str | Path, device: str = "cpu") -> Run:
    """Load a run folder written by `guppyforge train`; one-line errors for what is missing."""
    run_dir = Path(run_dir)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (run_dir / name).is_file():
            raise GuppyError(
                f"{run_dir / name}: missing. Is {run_dir} a run folder written by `guppyforge train`?"
            )
    try:
        config = json.loads((run_dir / "config.json").read_text())
        model = GPT(ModelConfig(**config["model"]))
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        raise GuppyError(
            f"{run_dir / 'config.json'}: unreadable model config ({e}). Retrain or restore it."
        ) from None
    try:
        state = load_file(str(run_dir / "model.safetensors"))
        state["lm_head.weight"] = state["wte.weight"]
        model.load_state_dict(state)
    except Exception as e:  # safetensors raises several types for a corrupt file
        raise GuppyError(
            f"{run_dir / 'model.safetensors'}: corrupt or not this model's weights ({type(e).__name__}). "
            "Retrain, or restore the file from a checkpoint."
        ) from None
    model.to(device).eval()
    try:
        tok = load_tokenizer(run_dir)
    except Exception as e:
        raise GuppyError(
            f"{run_dir / 'tokenizer.json'}: unreadable ({e}). Retrain or restore it."
        ) from None
    return Run(run_dir, model, tok, config)


def dataset_dir(run_dir: Path, config: dict, data: str | Path | None = None) -> Path:
    """The dataset a run trained on (config.json `dataset.path`), or `data` when given."""
    if data is not None:
        return Path(data)
    recorded = (config.get("dataset") or {}).get("path")
    if not recorded:
        raise GuppyError(
            f"{run_dir / 'config.json'}: no dataset.path recorded. Pass the dataset with --data DIR."
        )
    if not Path(recorded).is_dir():
        raise GuppyError(
            f"{recorded}: dataset folder not found (config.json dataset.path). Pass it with --data DIR."
        )
    return Path(recorded)


def pick_device(name: str = "auto") -> torch.device:
    """`auto` means CUDA if present, then Apple's MPS, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GuppyError("--device cuda: no CUDA GPU is visible. Use --device auto or cpu.")
    if name not in DEVICES:
        raise GuppyError(f"--device: unknown device '{name}'. Use auto, cpu, cuda or mps.")
    return torch.device(name)
