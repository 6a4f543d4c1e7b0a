"""A run folder (runs/NAME): what `train` writes and what chat, eval, export and serve read.

Read in this order: the folder's layout and `load_run`; checkpoints, everything needed to
continue a run where it stopped; starting a run (its options checked, the folder claimed, a
resume matched to its checkpoint); the loss plot; the rest of what a finished run holds
(config.json, weights, the persona, the model card).
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from guppyforge.defaults import DEVICES
from guppyforge.errors import GuppyError
from guppyforge.files import (
    KIND_FILES,
    Claim,
    FolderLock,
    atomic_path,
    check_folder,
    kind_of,
    templates_dir,
    write_atomic,
)
from guppyforge.model.gpt import ACTIVATIONS, GPT, PRESETS, ModelConfig, param_counts
from guppyforge.model.tokenizer import load_tokenizer
from guppyforge.persona.chat_rows import examples_file_of
from guppyforge.persona.schema import load_persona
from guppyforge.train.config import TrainOptions, check_options, resolve_options
from guppyforge.train.distributed import most_processes

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


def save_weights(model: GPT, path: Path) -> None:
    """Write model.safetensors atomically, so a crash never leaves half a file."""
    # The head is tied to the token embedding: store the matrix once (safetensors refuses
    # tensors that share memory) and tie it again on load.
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    state.pop("lm_head.weight", None)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})


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


def run_files(data_dir: Path) -> tuple[str, ...]:
    """What `train` writes into a run folder: the usual files, and the persona's examples_file
    (copied beside the persona's copy) when the data has a persona that names one."""
    found = examples_file_of(Path(data_dir) / "persona.yaml") if Path(data_dir).is_dir() else None
    return KIND_FILES["run"] + ((found[0],) if found else ())


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


# --- Checkpoints: everything needed to continue a run exactly where it stopped.
#
# Exact means bit for bit: a run stopped at step 30 and resumed to 60 logs the same losses as a run
# straight to 60. For that a checkpoint holds more than the weights: the optimizer's moments, the
# step (which fixes the learning rate), the GradScaler's scale, every random generator's state,
# and the position in the data (epoch, row). The file is written to a temporary name and renamed,
# so a crash mid-write leaves the previous checkpoint intact.

FORMAT = 1  # bump when the layout below changes


def rng_state() -> dict:
    """The state of every random generator training draws from."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, **state) -> None:
    """Write `state` (tensors, numbers, dicts) to `path` atomically."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state, "rng": rng_state()}, tmp)


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint; a missing or damaged file is a one-line error, not a traceback."""
    path = Path(path)
    if not path.is_file():
        raise GuppyError(
            f"{path}: no checkpoint to resume from (the run stopped before its first one). "
            "Start again with --force instead of --resume."
        )
    try:
        # weights_only: a checkpoint is data. Unpickling arbitrary objects could run code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a truncated or foreign file
        raise GuppyError(
            f"{path}: corrupt checkpoint ({type(e).__name__}). Delete it and start without "
            "--resume, or restore it from a copy."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise GuppyError(
            f"{path}: not a checkpoint of this guppyforge version. Start without --resume."
        )
    return state


# --- Starting a run: its options checked, its folder claimed, a resume matched to its checkpoint.
#
# All of it happens before any work, so a mistake costs one line and nothing on disk. Under
# torchrun process 0 does the claiming (loop.py); `train --nproc` checks it all before it starts
# the processes (`check_train`).


def start_options(preset: str | None, options: dict) -> TrainOptions:
    """The options as given, each checked: a typo'd option fails before anything else happens."""
    try:
        o = TrainOptions(preset=preset, **options)
    except TypeError as e:
        raise GuppyError(f"train(): {e}") from None
    check_options(o, PRESETS)
    return o


def claim_run(
    run: Path, data_dir: Path, o: TrainOptions, force: bool, write: bool = True, lock=None
):
    """Check that `run` may be written (or continued, with --resume); the checkpoint, if any.

    With `write`, `lock` (a FolderLock on `run`) is taken, then the folder is cleared of an
    earlier run's files (after --force) and marked ours; without, nothing is written
    (`check_train`), and a run that another process is writing is refused all the same.
    """
    ckpt_path = run / "checkpoints" / "last.pt"
    if not (o.resume or force) and kind_of(run, "run") == "run":
        if not ckpt_path.is_file() and not (run / "config.json").is_file():
            raise GuppyError(
                f"{run}: holds a run stopped before its first checkpoint, so there is nothing "
                "to resume. Add --force to start it again (only its own files are replaced), "
                "or pick --out."
            )
        raise GuppyError(f"{run}: already holds a run. Add --resume to continue it, or pick --out.")
    files = run_files(data_dir)  # the usual ones, and the persona's examples_file
    owned: Claim = check_folder(
        run, "run", force and not o.resume, inputs=[data_dir], files=files, reuse=o.resume
    )
    lock = lock or FolderLock(run)
    if run.is_dir() and write:  # before anything changes: a run being written is not touched
        lock.hold()
    elif run.is_dir():
        lock.check()
    ckpt = load_checkpoint(ckpt_path) if o.resume else None
    if write:
        if not o.resume:
            owned.clear()  # an earlier run's files (after --force): none may be left stale
        owned.take()
        lock.hold()
    return ckpt


def resume_options(o: TrainOptions, ckpt: dict | None, processes: int, run: Path):
    """The options resolved (config.resolve_options); a resumed run keeps its process count."""
    o = resolve_options(o, ckpt["train"] if ckpt else None)
    n = ckpt.get("processes", 1) if ckpt else processes
    if n != processes:  # each step's batch would hold other rows
        raise GuppyError(
            f"{run}: trained in {n} processes, and this is {processes}. Resume it with "
            f"--nproc {n} (or torchrun --nproc-per-node {n})."
        )
    return o


def check_train(
    data_dir: str | Path,
    out_dir: str | Path,
    preset=None,
    force=False,
    processes=1,
    **options,
) -> None:
    """What `train` would refuse at its start, checked without writing anything: the options,
    the device, the run folder and, with --resume, its checkpoint. `train --nproc` runs this
    before it starts torchrun, so a mistake is one line, not one per process."""
    o = start_options(preset, options)
    device = pick_device(o.device)
    most, what = most_processes(device)
    if processes > most:
        raise GuppyError(
            f"--nproc {processes}: this machine has {most} {what}, and each process needs one "
            f"of its own. Use --nproc {most} or fewer."
        )
    run = Path(out_dir)
    ckpt = claim_run(run, Path(data_dir).resolve(), o, force, write=False)
    resume_options(o, ckpt, processes, run)


# --- The loss curve: train and eval loss against steps, written as a PNG.


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


# --- What a run folder holds besides checkpoints: config.json, weights, persona, plot, model card.
#
# config.json is written last. `model.run.load_run` needs it, so a run stopped before the end never
# looks complete: it has a checkpoint and a tokenizer, and no config.json.

CARD_TEMPLATE = "model_card.md.j2"


@dataclass
class PersonaInfo:
    """The parts of DATA_DIR/persona.yaml that a run records and shows."""

    name: str
    sha256: str
    display_name: str = ""
    summary: str = ""
    license: str = ""
    tags: list[str] = field(default_factory=list)
    probes: list[str] = field(default_factory=list)  # what each probe asks


def load_persona_info(data_dir: Path) -> PersonaInfo | None:
    """Read the persona copied next to the dataset, if there is one."""
    path = Path(data_dir) / "persona.yaml"
    if not path.is_file():
        return None
    p = load_persona(path)
    return PersonaInfo(
        name=p.name,
        sha256=p.sha256,
        display_name=getattr(p, "display_name", "") or "",
        summary=getattr(p, "summary", "") or "",
        license=getattr(p, "license", "") or "",
        tags=list(getattr(p, "tags", None) or []),
        probes=[probe.ask for probe in p.probes],
    )


def sample_prompts(persona: PersonaInfo | None, test_split, n: int = 3) -> list[list[dict]]:
    """What to ask the model at each eval: the persona's probes, else the first test
    conversations up to their first user message (a system message stays a system message)."""
    if persona and persona.probes:
        return [[{"role": "user", "content": ask}] for ask in persona.probes[:n]]
    chats = []
    for messages in test_split.select(range(min(n, len(test_split))))["messages"]:
        first = next((i for i, m in enumerate(messages) if m["role"] == "user"), 0)
        chats.append(messages[: first + 1])
    return chats


def dataset_info(data_dir: Path, splits) -> dict:
    """Where the data came from, for config.json (stats.json is optional)."""
    fingerprint = None
    stats = Path(data_dir) / "stats.json"
    if stats.is_file():
        try:
            fingerprint = json.loads(stats.read_text()).get("fingerprint")
        except (ValueError, AttributeError):
            fingerprint = None
    return {
        "path": str(Path(data_dir).resolve()),
        "fingerprint": fingerprint,
        "train_rows": splits["train"].num_rows,
        "test_rows": splits["test"].num_rows,
        "too_long": 0,
    }


def read_metrics(path: Path) -> list[dict]:
    """The records of metrics.jsonl; a line cut short by a crash is skipped."""
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return records


def render_model_card(
    run: Path, config: dict, persona: PersonaInfo | None, records: list[dict]
) -> str:
    """README.md for the run, from templates/model_card.md.j2."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # markdown; values in the YAML header go through |tojson
    )
    cfg = ModelConfig(**config["model"])
    tags = ["guppyforge", "character", "tiny-lm", "text-generation"]
    tags += persona.tags if persona else []
    evals = [r for r in records if "eval_loss" in r]
    return env.get_template(CARD_TEMPLATE).render(
        run=run,
        c=config,
        persona=persona,
        title=persona.display_name if persona else "a guppyforge model",
        license=(persona.license if persona and persona.license else "unknown"),
        tags=list(dict.fromkeys(tags)),
        params=param_counts(cfg),
        evals=evals,
    )


def finish_run(
    run: Path,
    model: GPT,
    train: dict,
    dataset: dict,
    persona: PersonaInfo | None,
    vocab_size: int,
    records: list[dict],
    results: dict,
) -> None:
    """Write the finished run's files; config.json last, so it marks the run complete."""
    save_weights(model, run / "model.safetensors")
    if persona:
        with atomic_path(run / "persona.yaml") as tmp:
            shutil.copyfile(Path(dataset["path"]) / "persona.yaml", tmp)
        if found := examples_file_of(Path(dataset["path"]) / "persona.yaml"):
            with atomic_path(run / found[0]) as tmp:  # the copy loads as the original did
                shutil.copyfile(found[1], tmp)
    config = {
        "model": model.cfg.to_dict(),
        "train": train,
        "dataset": dataset,
        "tokenizer": {"vocab_size": vocab_size},
        "results": results,
    }
    if persona:
        config["persona"] = {"name": persona.name, "sha256": persona.sha256}
    plot_losses(records, run / "loss.png", title=f"{run.name}: loss per token")
    write_atomic(run / "README.md", render_model_card(run, config, persona, records))
    write_atomic(run / "config.json", json.dumps(config, indent=2) + "\n")
