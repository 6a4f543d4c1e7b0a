"""Many training jobs at once: a grid of personas x presets x learning rates x seeds, as Ray tasks.

`guppyforge sweep` (a thin command in cli_model.py) calls `run_sweep`. Each persona's dataset is
generated once, into OUT/data/NAME; each job trains its own run folder, OUT/runs/JOB (with the
run folder's usual ownership rules), is scored by `eval`, and logs to OUT/logs/JOB.log. Ray runs
the jobs: on this machine by default (`ray.init` with the cores given), on a cluster with
`address` (every node needs guppyforge installed and OUT on a shared file system). At the end:
one table (OUT/sweep.txt, OUT/sweep.json) and the curves side by side (OUT/curves.png).

OUT is a guppyforge folder (files.py's rules): its marker lists the table, the curves and the
logs, each dataset and run folder has its own, and everything that can be refused is refused
before the first write. A stopped sweep does not resume: `--force` starts it again.

Ray is optional (`pip install 'guppyforge[cluster]'`): without it the sweep says so in one line.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from guppyforge.dataset.folder import check_destination
from guppyforge.errors import GuppyError
from guppyforge.files import (
    MARKER,
    Claim,
    atomic_path,
    builtin_persona,
    check_folder,
    guard,
    read_marker,
    text_table,
    write_atomic,
)
from guppyforge.persona.yamlsafe import YamlKind, fail, read_yaml
from guppyforge.train.config import TrainOptions

SCHEMA = "guppyforge.sweep/1"  # in sweep.json: the format of the file
INSTALL = "guppyforge sweep needs Ray: pip install 'guppyforge[cluster]'"
SUMMARY = ("sweep.json", "sweep.txt", "curves.png")
LISTS = ("personas", "presets", "lrs", "seeds")  # the grid's axes: one job per combination
PER_JOB = ("preset", "seed", "lr", "device", "progress", "resume")  # what the sweep sets itself
# What a grid's `train:` may set: the training options (train/config.py), less the per-job ones.
TRAIN_KEYS = tuple(f.name for f in fields(TrainOptions) if f.metadata and f.name not in PER_JOB)
GRID_YAML = YamlKind(  # what read_yaml's errors suggest for a grid file
    "sweep grid",
    "A sweep grid needs at least `personas: [cat]`",
    "A sweep grid is a mapping: start with `personas: [cat]`",
)


@dataclass
class Grid:
    """What a sweep trains: every combination of the four lists, with the same settings."""

    personas: list[str]  # persona files, or built-in names (`cat`)
    presets: list[str] = field(default_factory=lambda: ["tiny"])
    lrs: list[float | None] = field(default_factory=lambda: [None])  # None: the default rate
    seeds: list[int] = field(default_factory=lambda: [0])
    conversations: int = 6000  # per persona's dataset (`generate -n`)
    train: dict = field(default_factory=dict)  # any other `train` option: {max_steps: 300}
    eval_samples: int = 2  # replies per probe (`eval --samples`)
    offtopic_samples: int = 10
    cpus_per_job: int = 1
    # Where each key was read (`grid.yaml:4:15`), for error lines; not a key of the file.
    origin: dict[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Job:
    """One training job of the grid, and where it writes."""

    persona: str  # the persona file
    name: str  # the persona's name
    preset: str
    lr: float | None
    seed: int

    @property
    def id(self) -> str:
        # repr, not :g: 0.001 and 0.0010000001 are two rates, so two run folders.
        lr = f"-lr{self.lr!r}" if self.lr is not None else ""
        return f"{self.name}-{self.preset}{lr}-s{self.seed}"


def read_grid(path: str | Path) -> Grid:
    """A grid from a small YAML file (safe loading, one error line naming the key)::

    personas: [cat, my/fish.yaml]
    presets: [micro, tiny]
    lrs: [0.003, 0.006]
    seeds: [0, 1]
    conversations: 2000
    train: {max_steps: 200}
    """
    doc = read_yaml(path, GRID_YAML)
    known = {f.name for f in fields(Grid)} - {"origin"}
    for key in doc.data:
        if key not in known:
            raise GuppyError(
                f"{doc.at((key,), key=True)}: unknown key '{key}'. Use: {', '.join(sorted(known))}"
            )
    data = dict(doc.data)
    if "personas" not in data:
        raise fail(path, "no personas", "Add `personas: [cat]` (files or built-in names)")
    for key in LISTS:
        if key in data:
            # `seeds: 0` means [0]
            data[key] = _items(doc, key, data[key] if isinstance(data[key], list) else [data[key]])
    train = data.get("train", {})
    if not isinstance(train, dict):
        raise fail(
            path, "`train` is not a mapping", "Write train options as `train: {max_steps: 200}`"
        )
    for key in train:
        at = doc.at(("train", key), key=True)
        if key in PER_JOB:
            axis = f". List its values as `{key}s: [...]`" if f"{key}s" in LISTS else ""
            raise GuppyError(f"{at}: train: {key} is set by the sweep for each job{axis}")
        if key not in TRAIN_KEYS:
            raise GuppyError(f"{at}: train: unknown option '{key}'. Use: {', '.join(TRAIN_KEYS)}")
    return Grid(**data, origin={key: doc.at((key,)) for key in doc.data})


def _items(doc, key: str, values: list) -> list:
    """One of the grid's lists, each value checked where it is written; none listed twice."""
    if not values:
        fix = "List at least one value, or leave the key out for its default"
        if key == "personas":
            fix = "List at least one persona file or built-in name"
        raise GuppyError(f"{doc.at((key,))}: `{key}: []` lists nothing, so no job would run. {fix}")
    out: list = []
    for i, value in enumerate(values):
        at = f"{doc.at((key, i))}: {key}[{i}]"
        if key == "personas":
            value = _near(doc.path, str(value))
            if not Path(value).is_file() and builtin_persona(value) is None:
                raise GuppyError(
                    f"{at}: no persona file '{values[i]}' (beside the grid file) and no built-in "
                    "persona of that name. See `guppyforge personas`"
                )
        elif key == "lrs":
            if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as text
                with contextlib.suppress(ValueError):
                    value = float(value)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise GuppyError(f"{at}: {value!r} is not a number. Write a rate such as 0.003")
        elif key == "seeds" and (isinstance(value, bool) or not isinstance(value, int)):
            raise GuppyError(f"{at}: {value!r} is not a whole number. Write a seed such as 0")
        elif key == "presets" and not isinstance(value, str):
            raise GuppyError(f"{at}: {value!r} is not a preset name. See `guppyforge presets`")
        if value in out:  # only truly equal values: 1e-3 is 0.001, 0.0010000001 is not
            raise GuppyError(
                f"{at}: {values[i]} is listed twice ({key}[{out.index(value)}] too). "
                "List each value once"
            )
        out.append(value)
    return out


def _near(grid_file: str | Path, persona: str) -> str:
    """A persona path in a grid file is read from the file's folder, as a person would mean it."""
    beside = Path(grid_file).parent / persona
    return str(beside) if beside.is_file() else persona


def persona_file(given: str) -> Path:
    """A persona file, or a built-in persona by name."""
    path = Path(given)
    if path.is_file():
        return path
    builtin = builtin_persona(given)
    if builtin is None:
        raise GuppyError(
            f"{given}: no such persona file or built-in persona (see `guppyforge personas`)."
        )
    return builtin


def plan(grid: Grid) -> list[Job]:
    """The grid's jobs, in order; a job listed twice (the same run folder twice) is refused."""
    from guppyforge.persona.schema import load_persona

    if not grid.personas:
        raise GuppyError("sweep: no personas. Give --persona (a file or a built-in name).")
    for key, flag in (("presets", "--preset"), ("lrs", "--lr"), ("seeds", "--seed")):
        if not getattr(grid, key):
            raise GuppyError(
                f"sweep: no {key}, so no job would run. Give {flag}, or leave the default."
            )
    counts = [("-n", grid.conversations, 1), ("--cpus-per-job", grid.cpus_per_job, 1)]
    counts += [("--eval-samples", grid.eval_samples, 1)]
    counts += [("offtopic_samples", grid.offtopic_samples, 0)]
    for name, value, low in counts:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise GuppyError(f"sweep: {name} {value!r}: must be a whole number of at least {low}.")
    people = [(str(persona_file(p)), load_persona(persona_file(p)).name) for p in grid.personas]
    jobs = [
        Job(path, name, preset, lr, seed)
        for (path, name), preset, lr, seed in itertools.product(
            people, grid.presets, grid.lrs, grid.seeds
        )
    ]
    seen: dict[str, Job] = {}
    for job in jobs:
        if job.id in seen:
            raise GuppyError(
                f"sweep: job {job.id} is in the grid twice (same persona name, preset, lr and "
                "seed), so two jobs would write one run folder. List each value once."
            )
        seen[job.id] = job
    return jobs


def run_job(job: Job, data_dir: str, run_dir: str, log: str, grid: Grid, force: bool) -> dict:
    """Train one job's run folder and score it; its row of the table. Runs as a Ray task."""
    import torch

    from guppyforge.evaluate.score import evaluate_run
    from guppyforge.train.loop import train

    torch.set_num_threads(grid.cpus_per_job)  # the cores Ray gave this task, no more
    started = time.monotonic()
    options = dict(grid.train, preset=job.preset, seed=job.seed, progress=False, force=force)
    if job.lr is not None:
        options["lr"] = job.lr
    with open(log, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        run = train(data_dir, run_dir, device="cpu", **options)
        scores = evaluate_run(
            run,
            samples=grid.eval_samples,
            offtopic_samples=grid.offtopic_samples,
            topic_samples=0,
            seed=job.seed,
        )
    results = json.loads((Path(run) / "config.json").read_text())["results"]
    return {
        "job": job.id,
        "eval_loss": results["final_eval_loss"],
        "own": scores["probe_pass_rate"],
        "blind": scores["blind_pass_rate"],
        "offtopic": scores["offtopic_pass_rate"],
        "steps": results["steps"],
        "train_minutes": results["minutes"],
        "tokens_per_s": results["tokens_per_s"],
        "seconds": round(time.monotonic() - started, 1),
    }


def run_sweep(
    grid: Grid,
    out: str | Path,
    cpus: int | None = None,
    address: str | None = None,
    force: bool = False,
    say=print,
) -> list[dict]:
    """Run every job of `grid` as a Ray task; write OUT/sweep.{txt,json} and OUT/curves.png.

    Everything that can be refused is refused before the first write (`check_out`, Ray's
    start, its cores), so a refused sweep leaves OUT as it was.
    """
    try:
        import ray
    except ImportError:
        raise GuppyError(INSTALL) from None
    from guppyforge.dataset.generate import generate_dataset

    out = Path(out)
    if cpus is not None and cpus < 1:
        raise GuppyError(f"--cpus {cpus}: must be at least 1.")
    jobs = plan(grid)
    claim = check_out(out, jobs, grid, force)
    if cpus is not None and address is None:
        check_cores(grid, cpus, given=True)  # before Ray starts
    ours = not ray.is_initialized()
    if ours:
        start_ray(ray, address, cpus)
    try:
        if cpus is None and address is None:  # a cluster's autoscaler may add bigger nodes
            check_cores(grid, ray.cluster_resources().get("CPU", 0), given=False)
        started = time.monotonic()
        claim.clear()  # an earlier sweep's files (after --force): exactly those its marker lists
        claim.take()
        guard(out, lambda: (out / "logs").mkdir(exist_ok=True))
        for path, name in dict.fromkeys((job.persona, job.name) for job in jobs):
            say(f"generating {out / 'data' / name} from {path}")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                generate_dataset(
                    path, out / "data" / name, n=grid.conversations, force=force, progress=False
                )
            for warning in caught:
                say(f"warning: {warning.message}")

        task = ray.remote(num_cpus=grid.cpus_per_job)(run_job)
        pending = {
            task.remote(
                job,
                str(out / "data" / job.name),
                str(out / "runs" / job.id),
                str(out / "logs" / f"{job.id}.log"),
                grid,
                force,
            ): job
            for job in jobs
        }
        say(f"{len(jobs)} jobs on {ray.cluster_resources().get('CPU', 0):g} CPUs")
        rows = {}
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ref)
            try:
                rows[job.id] = ray.get(ref)
            except Exception as e:  # one failed job leaves the others their results
                cause = getattr(e, "cause", None) or e
                rows[job.id] = {"job": job.id, "error": f"{type(cause).__name__}: {cause}"}
            row = rows[job.id]
            what = row.get("error") or f"eval loss {row['eval_loss']:.3f} in {row['seconds']} s"
            say(f"done {len(rows)}/{len(jobs)}: {job.id}: {what}")
    finally:
        if ours:
            ray.shutdown()
    wall = time.monotonic() - started
    rows = [rows[job.id] | {"persona": job.name, "preset": job.preset} for job in jobs]
    table = sweep_table(rows)
    say(table)
    busy = sum(r.get("seconds", 0) for r in rows)
    say(f"{len(jobs)} jobs in {wall:.0f} s of wall time; their own times add up to {busy:.0f} s")
    settings = {k: v for k, v in asdict(grid).items() if k != "origin"}
    summary = {"schema": SCHEMA, "grid": settings, "wall_seconds": round(wall, 1)}
    summary["jobs"] = rows
    text = json.dumps(summary, indent=2) + "\n"
    guard(out, lambda: write_atomic(out / "sweep.json", text))
    guard(out, lambda: write_atomic(out / "sweep.txt", table + "\n"))
    plot_curves([out / "runs" / job.id for job in jobs], out / "curves.png")
    say(f"wrote {out / 'sweep.txt'}, {out / 'sweep.json'} and {out / 'curves.png'}")
    failed = [r["job"] for r in rows if "error" in r]
    if failed:
        raise GuppyError(
            f"sweep: {len(failed)} of {len(rows)} jobs failed ({', '.join(failed)}); each "
            f"log is in {out / 'logs'}."
        )
    return rows


def check_out(out: Path, jobs: list[Job], grid: Grid, force: bool) -> Claim:
    """What the sweep writes may be written; nothing is. OUT is a "sweep" folder whose marker
    lists the summary and the logs; each dataset and run folder is checked by its own rules."""
    from guppyforge.train.run_folder import check_train

    logs = [f"logs/{job.id}.log" for job in jobs]
    inputs = [job.persona for job in jobs]
    # Its own "already holds" line is replaced below by one that says what a sweep can do.
    claim = check_folder(out, "sweep", True, inputs=inputs, files=(*SUMMARY, *logs))
    earlier = read_marker(out) is not None and any(p.name != MARKER for p in out.iterdir())
    if earlier and not force:
        if "sweep.json" in claim.ours:
            raise GuppyError(
                f"{out}: already holds a sweep. Add --force to run it again (that replaces only "
                "the files guppyforge wrote), or choose a new --out"
            )
        raise GuppyError(
            f"{out}: holds a sweep that did not finish (stopped?), and a sweep cannot resume. "
            "Add --force to start it again (that replaces only the files guppyforge wrote), "
            "or choose a new --out"
        )
    for path, name in dict.fromkeys((job.persona, job.name) for job in jobs):
        check_destination(out / "data" / name, force, [path])
    options = dict(grid.train)
    for reserved in PER_JOB:
        if reserved in options:
            raise GuppyError(f"sweep: `train: {reserved}` is set per job. Use the grid's lists.")
    for job in jobs:
        lr = {"lr": job.lr} if job.lr is not None else {}
        check_train(
            out / "data" / job.name,
            out / "runs" / job.id,
            preset=job.preset,
            force=force,
            seed=job.seed,
            device="cpu",
            **lr,
            **options,
        )
    return claim


def check_cores(grid: Grid, cpus: float, given: bool) -> None:
    """Refuse jobs that ask more cores than Ray has: Ray would wait for them forever."""
    n = grid.cpus_per_job
    if n <= cpus:
        return
    place = grid.origin.get("cpus_per_job")
    asked = f"{place}: cpus_per_job {n}" if place else f"--cpus-per-job {n}"
    has = f"--cpus {cpus:g}" if given else f"{cpus:g} here"
    more = f", or give --cpus {n}" if given else ""
    raise GuppyError(
        f"{asked}: more CPUs than Ray has ({has}), so no job would ever start. Ask for at most "
        f"{cpus:g} per job{more}"
    )


def start_ray(ray, address: str | None, cpus: int | None) -> None:
    """Start a local Ray with `cpus` cores, or connect to the cluster at `address`."""
    kwargs = {"address": address} if address else {"num_cpus": cpus, "include_dashboard": False}
    try:
        ray.init(**kwargs, logging_level="ERROR", log_to_driver=False)
    except ValueError as e:
        if "ray[client]" not in str(e):
            raise
        # Ray's own words: `ray://` needs the client's packages (grpc), which `pip install ray`
        # leaves out.
        raise GuppyError(
            f'--address {address}: Ray Client is not installed. pip install "ray[client]" '
            "(the cluster's Ray version), or run on a node of the cluster with --address auto"
        ) from None
    except ConnectionError as e:  # no cluster where --address points (`auto`: none running)
        raise GuppyError(
            f"--address {address}: no Ray cluster answered ({str(e).splitlines()[0][:120]}). "
            "Start one (`ray start --head`), fix the address, or leave --address out to run here"
        ) from None


def _rate(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def sweep_table(rows: list[dict]) -> str:
    """One line per job: eval loss, pass rates (own probes, blind, off-topic), time, tokens/s."""
    head = ("job", "eval loss", "own", "blind", "off-topic", "steps", "seconds", "tokens/s")
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append((r["job"], "failed", "", "", "", "", "", ""))
            continue
        lines.append(
            (
                r["job"],
                f"{r['eval_loss']:.3f}",
                _rate(r["own"]),
                _rate(r["blind"]),
                _rate(r["offtopic"]),
                r["steps"],
                f"{r['seconds']:.0f}",
                f"{r['tokens_per_s']:,}",
            )
        )
    return text_table(lines)


def plot_curves(runs: list[Path], path: Path) -> None:
    """Each run's train and eval loss in its own panel, side by side, on one y scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(runs))
    rows = math.ceil(len(runs) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.2 * cols, 2.6 * rows), dpi=100, sharey=True, squeeze=False
    )
    for ax, run in zip(axes.flat, runs, strict=False):
        records = []
        with contextlib.suppress(OSError):
            lines = (run / "metrics.jsonl").read_text().splitlines()
            records = [json.loads(line) for line in lines if line.strip()]
        train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
        evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
        if train:
            ax.plot(*zip(*train, strict=True), color="tab:blue", lw=1, label="train")
        if evals:
            ax.plot(*zip(*evals, strict=True), "o-", color="tab:orange", ms=3, label="eval")
        ax.set_title(run.name, fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(runs) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("loss per token", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
