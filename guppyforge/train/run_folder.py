"""Writing a run folder (runs/NAME): what `train` puts there and when. model/run.py reads it.

Read in this order: the weights and the files a run holds; checkpoints, everything needed to
continue a run where it stopped; starting a run (its options checked, the folder claimed and
locked, a resume matched to its checkpoint); the loss plot; the rest of what a finished run
holds (config.json, the persona, the model card).
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

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
from guppyforge.model.gpt import GPT, PRESETS, ModelConfig, param_counts
from guppyforge.model.run import pick_device
from guppyforge.persona.chat_rows import examples_file_of
from guppyforge.persona.schema import load_persona
from guppyforge.train.config import TrainOptions, check_options, resolve_options
from guppyforge.train.distributed import most_processes

# --- What train writes beside the checkpoints (the layout: model/run.py, which reads it back).


def save_weights(model: GPT, path: Path) -> None:
    """Write model.safetensors atomically, so a crash never leaves half a file."""
    # The head is tied to the token embedding: store the matrix once (safetensors refuses
    # tensors that share memory) and tie it again on load.
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    state.pop("lm_head.weight", None)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})


def run_files(data_dir: Path) -> tuple[str, ...]:
    """What `train` writes into a run folder: the usual files, and the persona's examples_file
    (copied beside the persona's copy) when the data has a persona that names one."""
    found = examples_file_of(Path(data_dir) / "persona.yaml") if Path(data_dir).is_dir() else None
    return KIND_FILES["run"] + ((found[0],) if found else ())


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
