"""`guppyforge generate`: a persona file becomes a dataset folder that `load_dataset` reads.

    DIR/data/train-00000-of-00001.parquet   columns: messages, topic, template_id, turns
    DIR/data/test-00000-of-00001.parquet    no user message of test appears in train
    DIR/README.md                           dataset card (YAML metadata + figures)
    DIR/stats.json                          the same figures, for programs
    DIR/persona.yaml                        the persona file, byte for byte
    DIR/EXAMPLES (its examples_file, if any)  beside it at the same relative path, byte for byte

The steps, in the order they run: draw.py (unique conversations), split.py (the leak-free
split), folder.py (the figures and card, the parquet files and the all-or-nothing folder).
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from guppyforge.dataset.draw import DrawResult, draw_unique, turn_mix
from guppyforge.dataset.folder import (
    atomic_folder,
    check_destination,
    diversity,
    fingerprint,
    pair_counts,
    render_card,
    topic_counts,
    write_parquet,
)
from guppyforge.dataset.split import message_keys, split_by_prompt
from guppyforge.defaults import ROWS
from guppyforge.errors import GuppyError
from guppyforge.files import builtin_persona
from guppyforge.persona.conversations import OFFTOPIC
from guppyforge.persona.forecast import capacity
from guppyforge.persona.schema import load_persona
from guppyforge.version import __version__

MAX_ROWS = 5_000_000  # conversations per dataset: ~80x the default, and a few GB in memory
MAX_WORKERS = 64


class CapacityWarning(UserWarning):
    """The persona cannot make as many distinct conversations as were asked for."""


class TemplateTextWarning(UserWarning):
    """Some generated rows still held template syntax and were left out."""


class DataWarning(UserWarning):
    """The data is not what the persona file asked for: topic shares, repeats, test coverage."""


SHARE_TOLERANCE = 0.10  # a topic's rows may differ from its weight's share by this fraction
MIN_UNIQUE_PCT = 90.0  # below this share of new draws, the persona repeats itself too much


@dataclass
class GenerateResult:
    """What `generate_dataset` wrote, and the figures a user asks about first."""

    out_dir: Path
    rows: int
    train: int
    test: int
    drawn: int  # generated conversations drawn, duplicates included
    unique_pct: float  # unique / drawn, in percent
    examples: int  # hand-written examples included
    capacity_spent: bool  # fewer rows than asked: the persona ran out of distinct conversations
    fingerprint: str  # sha256 over the rows, as in the card
    seconds: float  # the whole call
    generation_seconds: float  # drawing and deduplicating conversations only
    stats: dict = field(repr=False, default_factory=dict)  # everything in stats.json

    def summary(self) -> str:
        """One line for the end of the command's output."""
        return (
            f"wrote {self.out_dir}: {self.rows:,} rows (train {self.train:,}, test {self.test:,}), "
            f"{self.unique_pct:.2f}% unique of {self.drawn:,} drawn, "
            f"{self.seconds:.1f} s ({self.generation_seconds:.1f} s generating)"
        )


def generate_dataset(
    persona_path: str | Path,
    out_dir: str | Path,
    n: int = ROWS,
    seed: int = 42,
    test_size: float = 0.05,
    turns: str | int | None = None,
    workers: int = 1,
    force: bool = False,
    strict: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> GenerateResult:
    """Generate `n` unique conversations from a persona file and write them as a dataset folder.

    `turns` is `N` or a range `A-B`; None uses the persona's `turns:` mix (one turn if it has
    none). Rows whose text still holds template syntax are left out with a TemplateTextWarning
    (with `strict`, a GuppyError). Same persona + seed give identical rows (and parquet
    bytes) whatever `workers` is. `command` is quoted in the card; by default the equivalent
    `guppyforge generate` command line is written there. Raises GuppyError on bad input, and with
    `strict` when the persona cannot fill `n` rows (otherwise a CapacityWarning is issued).
    """
    started = time.perf_counter()
    given = persona_path
    persona_path, out_dir = _resolve_persona(persona_path), Path(out_dir)
    for name, value in (("-n", n), ("--workers", workers), ("--seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise GuppyError(f"{name} {value!r}: must be a whole number.")
    if n < 1:
        raise GuppyError(f"-n {n}: the number of conversations must be at least 1.")
    if n > MAX_ROWS:  # every row is held in memory until the split: bound it up front
        raise GuppyError(f"-n {n}: at most {MAX_ROWS:,} conversations per dataset. Ask for fewer.")
    if workers < 1:
        raise GuppyError(f"--workers {workers}: must be at least 1.")
    if workers > MAX_WORKERS:
        raise GuppyError(f"--workers {workers}: at most {MAX_WORKERS}. Use about one per core.")
    if not 0 <= test_size < 1:
        raise GuppyError(f"--test-size {test_size}: must be at least 0 and below 1. Try 0.05.")
    if turns is not None:
        turn_mix(turns, None)  # a bad --turns fails before anything is read
    check_destination(out_dir, force, [persona_path])  # fail before the work, not after it

    persona = load_persona(persona_path)
    # The copy in the folder must be the file that made the data, even if someone saves an edit
    # while we run: read it now and check it against the hash taken while loading.
    persona_bytes = persona_path.read_bytes()
    if hashlib.sha256(persona_bytes).hexdigest() != persona.sha256:
        raise GuppyError(f"{persona_path}: the file changed while it was read. Run again.")
    examples_copy = None  # (relative path, bytes): the folder's persona copy must load too
    if persona.examples_file:
        rel, digest = persona.examples_file
        examples_copy = (rel, (persona_path.resolve().parent / rel).read_bytes())
        if hashlib.sha256(examples_copy[1]).hexdigest() != digest:
            raise GuppyError(f"{persona_path.parent / rel}: the file changed while it was read.")

    mix = turn_mix(turns, persona)
    if strict:
        _check_capacity(persona, persona_path, n, mix)
    generation_started = time.perf_counter()
    draw = draw_unique(persona_path, persona, seed, n, mix, workers, progress)
    generation_seconds = time.perf_counter() - generation_started
    if draw.capacity_spent:
        message = (
            f"{persona_path}: the persona made only {len(draw.rows):,} distinct conversations of "
            f"the {n:,} asked for ({draw.drawn:,} drawn). Add `ask`/`say` templates or grammar "
            "alternatives, or lower -n."
        )
        _warn_or_fail(message, CapacityWarning, strict)
    if draw.refused:
        message = (
            f"{persona_path}: {draw.refused:,} generated rows still held template syntax and were "
            f"left out, e.g. {draw.refused_example}. Fix that template (quote it, close its "
            "{{ }}, or write {{ name }} rather than {name})"
        )
        _warn_or_fail(message, TemplateTextWarning, strict)

    names = (persona.name, persona.display_name)
    keys = [message_keys(row[0], u, names) for row, u in zip(draw.rows, draw.unvaried, strict=True)]
    topics = [row[1] for row in draw.rows]  # every topic gets its share of test rows
    train_at, test_at = split_by_prompt(keys, test_size, seed, topics)
    splits = {"train": [draw.rows[i] for i in train_at]}
    if test_at:
        splits["test"] = [draw.rows[i] for i in test_at]

    shown = turns if turns is not None else ",".join(f"{k}:{w:g}" for k, w in mix)
    stats = _stats(persona, draw, splits, n=n, seed=seed, turns=shown, test_size=test_size)
    # The folder names its own copy: an author's path means nothing to whoever downloads it.
    stats["warnings"] = data_warnings(stats, "persona.yaml")
    for message in data_warnings(stats, persona_path):
        _warn_or_fail(message, DataWarning, strict)
    if command is None:
        command = _command(given, out_dir, n, seed, test_size, turns, workers, strict)

    with atomic_folder(out_dir, force, [persona_path]) as tmp:
        files = {}
        for name, rows in splits.items():
            path = tmp / "data" / f"{name}-00000-of-00001.parquet"
            files[name] = {"num_bytes": write_parquet(rows, path)}
            files[name]["file_bytes"] = path.stat().st_size
        (tmp / "persona.yaml").write_bytes(persona_bytes)  # the exact bytes, comments and all
        if examples_copy:  # beside the copy, at the same relative path, so the copy loads
            (tmp / examples_copy[0]).parent.mkdir(parents=True, exist_ok=True)
            (tmp / examples_copy[0]).write_bytes(examples_copy[1])
        text = json.dumps(stats, indent=2, ensure_ascii=False) + "\n"
        (tmp / "stats.json").write_text(text, encoding="utf-8")
        # The card last: a folder with a README is the one that looks finished.
        card = render_card(stats, persona, command, files)
        (tmp / "README.md").write_text(card, encoding="utf-8")

    return GenerateResult(
        out_dir=out_dir,
        rows=stats["rows"],
        train=stats["splits"]["train"],
        test=stats["splits"].get("test", 0),
        drawn=draw.drawn,
        unique_pct=draw.unique_pct,
        examples=draw.examples,
        capacity_spent=draw.capacity_spent,
        fingerprint=stats["fingerprint"],
        seconds=time.perf_counter() - started,
        generation_seconds=generation_seconds,
        stats=stats,
    )


def _warn_or_fail(message: str, category: type[Warning], strict: bool) -> None:
    """With --strict a shortfall is an error; without, a warning the CLI prints as one line."""
    if strict:
        raise GuppyError(message)
    warnings.warn(message, category, stacklevel=3)


def data_warnings(stats: dict, persona_path) -> list[str]:
    """Where the rows differ from what the file asked for, each as one line with its fix."""
    out = []
    examples, n = stats["examples"], stats["n_requested"]
    if examples and examples >= n:  # examples come first: the rows were full before any draw
        return [
            f"{persona_path}: its hand-written examples fill all {n:,} rows asked for (-n "
            f"{n:,}), so no row was generated from its topics, and any example past the "
            f"first {n:,} was left out. Raise -n above the number of its examples "
            "(`examples` and `examples_file` together)"
        ]
    # Off-topic rows take their own share of the schedule; the topics' weights split the rest.
    generated = stats["rows"] - examples - stats.get("offtopic_rows", 0)
    if stats["drawn"] and stats["unique_pct"] < MIN_UNIQUE_PCT:
        out.append(
            f"{persona_path}: only {stats['unique_pct']:.2f}% of {stats['drawn']:,} draws "
            f"were new (under {MIN_UNIQUE_PCT:g}%): some (ask, say) pairs repeat. "
            "`guppyforge validate` names them at their lines"
        )
    topics = stats["topics"]
    total = sum(t["weight"] for t in topics.values())
    for name, t in topics.items():
        if not t["weight"] or not total:
            continue
        asked = generated * t["weight"] / total
        # A topic's rows hold its hand-written examples too, which no weight schedules; which
        # topic each is in is not counted here, so over its share means beyond all of them.
        rows = max(t["rows"] - examples, min(t["rows"], asked))
        # A small topic's count moves by a few rows with where the conversations fall in the
        # schedule and which draws repeat: about its square root is chance, not the file.
        if asked and abs(rows - asked) > max(SHARE_TOLERANCE * asked, 2 * math.sqrt(asked)):
            out.append(
                f"{persona_path}: topics.{name}: {rows:,} rows where its weight "
                f"asked for about {asked:,.0f} ({100 * (rows / asked - 1):+.0f}%). "
                "Fix the dry pairs `guppyforge validate` names, or change its weight"
            )
        if "test" in stats["splits"] and t.get("test", 0) == 0:
            out.append(
                f"{persona_path}: topics.{name}: no rows in the test split, so eval never "
                "sees it held out. Give it more distinct questions, or raise --test-size"
            )
    return out


def _check_capacity(persona, persona_path: Path, n: int, mix) -> None:
    """With --strict, refuse at once a request the persona's counted capacity cannot fill,
    rather than drawing for hours first. Only exact counts of single-turn data can refuse."""
    if tuple(turns for turns, _ in mix) != (1,):
        return
    table = capacity(persona)
    total = sum(c.conversations for c in table.values()) + len(persona.examples)
    if all(c.exact for c in table.values()) and total < n:
        raise GuppyError(
            f"{persona_path}: the persona can make only {total:,} distinct conversations (counted), "
            f"fewer than the {n:,} asked for (--strict). Lower -n, or add templates or "
            "grammar alternatives (see `guppyforge validate`)."
        )


def _resolve_persona(path: str | Path) -> Path:
    """A persona file path, or a built-in persona's name (`guppy`) turned into its path."""
    if Path(path).is_file():
        return Path(path)
    builtin = builtin_persona(str(path)) if "/" not in str(path) else None
    if builtin is not None:
        return builtin
    raise GuppyError(f"{path}: no such persona file. Give a .yaml path or a built-in name (guppy).")


def _stats(persona, draw: DrawResult, splits: dict, **settings) -> dict:
    """Every figure of stats.json. Nothing here depends on timing or on the worker count."""
    weights = {name: topic.weight for name, topic in persona.topics.items()}
    return {
        "guppyforge_version": __version__,
        "persona": {
            "name": persona.name,
            "display_name": persona.display_name,
            "sha256": persona.sha256,
        },
        "seed": settings["seed"],
        "n_requested": settings["n"],
        "turns": str(settings["turns"]),
        "test_size": settings["test_size"],
        "rows": len(draw.rows),
        "splits": {name: len(rows) for name, rows in splits.items()},
        "examples": draw.examples,
        "drawn": draw.drawn,
        "unique_generated": draw.unique,
        "unique_pct": draw.unique_pct,
        "capacity_spent": draw.capacity_spent,
        "refused_template_text": draw.refused,
        "varied_rows": draw.varied,
        "offtopic_rows": sum(row[1] == OFFTOPIC for row in draw.rows),
        "topics": topic_counts(splits, weights),
        "pairs": pair_counts(draw.rows),
        "diversity": diversity(draw.rows),
        "fingerprint": fingerprint(splits),
    }


def _command(persona_path, out_dir, n, seed, test_size, turns, workers, strict) -> str:
    """The `guppyforge generate` command line that makes this same dataset, run in its folder.

    It names the folder's own copy, persona.yaml (the exact bytes that made the rows), never the
    path on the author's machine, which means nothing to whoever downloads the dataset.
    """
    del persona_path, out_dir  # the author's paths: deliberately left out
    args = ["guppyforge", "generate", "persona.yaml", "-n", str(n), "--seed", str(seed)]
    args += ["--test-size", str(test_size)]
    args += ["--turns", str(turns)] if turns is not None else []
    if workers != 1:
        args += ["--workers", str(workers)]
    if strict:
        args.append("--strict")
    args += ["--out", "rebuilt"]
    return shlex.join(args)
