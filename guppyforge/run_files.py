"""What a run folder holds besides checkpoints: config.json, weights, persona, plot, model card.

config.json is written last. `runs.load_run` needs it, so a run stopped before the end never
looks complete: it has a checkpoint and a tokenizer, and no config.json.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from guppyforge.model import GPT, ModelConfig
from guppyforge.paths import TEMPLATES_DIR
from guppyforge.plot import plot_losses
from guppyforge.presets import param_counts
from guppyforge.runs import save_weights

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
    try:
        from guppyforge.persona import load_persona
    except ImportError:  # the persona module is missing from this install: fall back to YAML
        return _persona_from_yaml(path)
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


def _persona_from_yaml(path: Path) -> PersonaInfo:
    import yaml

    raw = path.read_bytes()
    doc = yaml.safe_load(raw) or {}
    return PersonaInfo(
        name=str(doc.get("name", path.stem)),
        sha256=hashlib.sha256(raw).hexdigest(),
        display_name=str(doc.get("display_name", "")),
        summary=str(doc.get("summary", "")),
        license=str(doc.get("license", "")),
        tags=[str(t) for t in doc.get("tags", [])],
        probes=[str(p["ask"]) for p in doc.get("probes", []) if "ask" in p],
    )


def sample_prompts(persona: PersonaInfo | None, test_split, n: int = 3) -> list[str]:
    """What to ask the model at each eval: the persona's probes, else the first test prompts."""
    if persona and persona.probes:
        return persona.probes[:n]
    return [messages[0]["content"] for messages in test_split.select(range(n))["messages"]]


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


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def render_model_card(
    run: Path, config: dict, persona: PersonaInfo | None, records: list[dict]
) -> str:
    """README.md for the run, from templates/model_card.md.j2."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
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
        title=(persona.display_name or persona.name) if persona else "a guppyforge model",
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
        tmp = run / f"persona.yaml.tmp-{os.getpid()}"
        shutil.copyfile(Path(dataset["path"]) / "persona.yaml", tmp)
        os.replace(tmp, run / "persona.yaml")
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
