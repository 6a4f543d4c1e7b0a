"""What a run folder holds besides checkpoints: config.json, weights, persona, plot, model card.

config.json is written last. `model.run.load_run` needs it, so a run stopped before the end never
looks complete: it has a checkpoint and a tokenizer, and no config.json.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from guppyforge.files import atomic_path, write_atomic
from guppyforge.model.gpt import GPT, ModelConfig
from guppyforge.model.presets import param_counts
from guppyforge.model.run import save_weights
from guppyforge.persona.load import load_persona
from guppyforge.resources import templates_dir
from guppyforge.train.plot import plot_losses

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


def sample_prompts(persona: PersonaInfo | None, test_split, n: int = 3) -> list[str]:
    """What to ask the model at each eval: the persona's probes, else the first test prompts."""
    if persona and persona.probes:
        return persona.probes[:n]
    return [
        messages[0]["content"]
        for messages in test_split.select(range(min(n, len(test_split))))["messages"]
    ]


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
        with atomic_path(run / "persona.yaml") as tmp:
            shutil.copyfile(Path(dataset["path"]) / "persona.yaml", tmp)
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
