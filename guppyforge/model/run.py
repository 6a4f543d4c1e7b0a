"""A run folder as chat, eval, export, serve and `why` read it: the model, its tokenizer and
config.json, each checked, on the device asked for.

Everything that only reads a run imports this module, never the trainer (guppyforge.train
writes run folders; see train/run_folder.py for what it writes and when).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from guppyforge.defaults import DEVICES
from guppyforge.errors import GuppyError
from guppyforge.model.gpt import ACTIVATIONS, GPT, ModelConfig, param_counts
from guppyforge.model.tokenizer import load_tokenizer

# --- A run folder on disk: what `train` writes and what chat, eval, export and serve read.
#
# RUN/config.json         {"model": ModelConfig, "train": ..., "dataset": ..., "persona": ...}
# RUN/model.safetensors   the weights, in this package's names (see gpt.py)
# RUN/tokenizer.json      plus tokenizer_config.json with the chat template
# RUN/persona.yaml        the persona the data came from (eval's default probes)
# RUN/EXAMPLES            its examples_file, if it names one, at the same relative path


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


# Bounds on every field of config.json's "model", checked before anything is allocated: a
# hand-edited or hostile `vocab_size: 1000000000000` must be a line, not a 256 TB allocation.
MODEL_BOUNDS = {
    "vocab_size": (1, 1 << 20),
    "context": (1, 1 << 16),
    "n_layer": (1, 512),
    "n_head": (1, 1024),
    "d_model": (1, 1 << 16),
    "d_ff": (1, 1 << 18),
}
MAX_PARAMS = 2_000_000_000  # ~8 GB of fp32 weights: far past any model this tool trains
MAX_CONFIG_BYTES = 16 << 20


def model_config(data, where: Path) -> ModelConfig:
    """A ModelConfig from config.json's "model" mapping, every field checked; one line if not."""
    if not isinstance(data, dict):
        raise GuppyError(f"{where}: `model` is not a mapping. Retrain, or restore the file")
    unknown = sorted(set(data) - {f.name for f in fields(ModelConfig)})
    if unknown:
        raise GuppyError(f"{where}: model.{unknown[0]}: not a model setting. Remove it")
    for key, (low, high) in MODEL_BOUNDS.items():
        value = data.get(key, getattr(ModelConfig, key))
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise GuppyError(
                f"{where}: model.{key}: {value!r} is not a whole number from {low} "
                f"to {high:,}. Retrain, or restore the file"
            )
    cfg = ModelConfig(**data)
    dropout = cfg.dropout
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise GuppyError(f"{where}: model.dropout: {dropout!r} is not a number in [0, 1)")
    if not isinstance(cfg.activation, str) or cfg.activation not in ACTIVATIONS:
        raise GuppyError(
            f"{where}: model.activation: unknown {cfg.activation!r}. Use one of "
            f"{', '.join(ACTIVATIONS)}"
        )
    if cfg.d_model % cfg.n_head:
        raise GuppyError(
            f"{where}: model.d_model {cfg.d_model} does not divide into "
            f"{cfg.n_head} heads (n_head). Retrain, or restore the file"
        )
    total = param_counts(cfg)["total"]
    if total > MAX_PARAMS:
        raise GuppyError(
            f"{where}: the model would have {total:,} parameters, more than the "
            f"{MAX_PARAMS:,} guppyforge loads. Retrain, or restore the file"
        )
    return cfg


def read_config(run_dir: Path) -> dict:
    """config.json as a dict; a run a kill stopped before the end says how to continue it."""
    path = run_dir / "config.json"
    if not path.is_file() and (run_dir / "checkpoints" / "last.pt").is_file():
        raise GuppyError(
            f"{path}: missing: training stopped before the end. Continue it with "
            f"`guppyforge train DATA --out {run_dir} --resume`"
        )
    if not path.is_file():
        raise GuppyError(
            f"{path}: missing. Is {run_dir} a run folder written by `guppyforge train`?"
        )
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ValueError("larger than 16 MiB")
        config = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as e:
        raise GuppyError(
            f"{path}: unreadable ({type(e).__name__}). Retrain or restore it"
        ) from None
    if not isinstance(config, dict) or "model" not in config:
        raise GuppyError(f"{path}: no `model` settings. Retrain or restore it")
    for key in ("train", "dataset", "persona", "tokenizer", "results"):  # read by chat, eval...
        if not isinstance(config.get(key, {}), dict):
            raise GuppyError(f"{path}: `{key}` is not a mapping. Retrain or restore the file")
    return config


def read_tokenizer(run_dir: Path) -> Tokenizer:
    """tokenizer.json, or one line naming it (a file cut short by a crash or a full disk)."""
    path = Path(run_dir) / "tokenizer.json"
    if not path.is_file():
        raise GuppyError(f"{path}: missing. Retrain, or restore it from a copy of the run")
    try:
        return load_tokenizer(run_dir)
    except Exception as e:  # tokenizers raises its own Exception type with serde's message
        why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise GuppyError(f"{path}: unreadable ({why}). Retrain, or restore it") from None


def load_run(run_dir: str | Path, device: str = "cpu") -> Run:
    """Load a run folder written by `guppyforge train`; one-line errors for what is missing."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    cfg = model_config(config["model"], run_dir / "config.json")
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        raise GuppyError(
            f"{weights}: missing. Is {run_dir} a run folder written by `guppyforge train`?"
        )
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises several types for a corrupt file
        raise GuppyError(
            f"{weights}: corrupt ({type(e).__name__}). Retrain, or restore the file from a copy."
        ) from None
    model = GPT(cfg)
    check_weights(state, model, weights, run_dir / "config.json")
    state["lm_head.weight"] = state["wte.weight"]
    model.load_state_dict(state)
    model.to(device).eval()
    tok = read_tokenizer(run_dir)
    if tok.get_vocab_size() > cfg.vocab_size:
        raise GuppyError(
            f"{run_dir / 'tokenizer.json'}: {tok.get_vocab_size():,} tokens, more "
            f"than the model's {cfg.vocab_size:,} (config.json). The files are "
            "from different runs: retrain, or restore them"
        )
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
    if not Path(recorded).exists():
        raise GuppyError(
            f"{recorded}: dataset folder not found (config.json dataset.path). Pass it with --data DIR."
        )
    return Path(recorded)


def check_weights(state: dict, model: GPT, weights: Path, config: Path) -> None:
    """The weights fit the config (else name both files) and hold only finite numbers."""
    expected = {k: v.shape for k, v in model.state_dict().items() if k != "lm_head.weight"}
    got = {k: v.shape for k, v in state.items()}
    if got != expected:
        extra, missing = sorted(set(got) - set(expected)), sorted(set(expected) - set(got))
        shape = [k for k in expected if k in got and got[k] != expected[k]]
        what = (
            f"holds {extra[0]}, which {config.name} has no place for"
            if extra
            else f"lacks {missing[0]}"
            if missing
            else f"{shape[0]} is {tuple(got[shape[0]])}, not {tuple(expected[shape[0]])}"
        )
        raise GuppyError(
            f"{weights}: does not match {config} ({what}): the two files are from "
            "different runs. Retrain, or restore the matching pair"
        )
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise GuppyError(
                f"{weights}: {name} holds NaN or infinity: the weights are damaged "
                "(a diverged run?). Retrain with a lower --lr, or restore the file"
            )


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
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise GuppyError(
            "--device mps: no Apple GPU (MPS) is available here. Use --device auto or cpu."
        )
    if name not in DEVICES:
        raise GuppyError(f"--device: unknown device '{name}'. Use auto, cpu, cuda or mps.")
    return torch.device(name)
