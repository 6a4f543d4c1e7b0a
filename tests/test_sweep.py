"""`guppyforge sweep`: a grid of training jobs as Ray tasks, each its own run folder, one table."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from click.testing import CliRunner

from guppyforge.apps.cli import cli
from guppyforge.apps.sweep import (
    INSTALL,
    SUMMARY,
    TRAIN_KEYS,
    Grid,
    plan,
    read_grid,
    run_sweep,
)
from guppyforge.errors import GuppyError
from guppyforge.files import MARKER, listing, read_marker
from guppyforge.model.run import load_run

# Two built-in personas x two seeds, micro: seconds per job, 2 CPUs for a local Ray (the test
# extra installs ray; without it these fail with the install line, they are not skipped).
TINY = dict(conversations=300, train={"max_steps": 10, "batch_size": 4}, offtopic_samples=2)
TINY |= dict(eval_samples=1, presets=["micro"], seeds=[0, 1])
# The same as a grid file, and the few flags that keep a sweep that should fail (but runs) short.
TINY_FILE = "conversations: 300\ntrain: {max_steps: 10, batch_size: 4}\neval_samples: 1\n"
TINY_FILE += "offtopic_samples: 2\npresets: [micro]\n"
SHORT = ["--preset", "micro", "-n", "300", "--max-steps", "2", "--cpus", "2"]
# What Ray 2.x raises for a `ray://` address when `ray[client]` (grpc) is not installed.
NO_CLIENT = (
    "Ray Client requires pip package `ray[client]`. If you installed the minimal Ray (e.g. "
    "`pip install ray`), please reinstall by executing `pip install ray[client]`."
)


def sweep(*args):
    return CliRunner().invoke(cli, ["sweep", *map(str, args)])


def snapshot(folder):
    """Every file's bytes and every folder under `folder`: what a refused sweep leaves alone."""
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "pets"
    rows = run_sweep(Grid(personas=["cat", "guppy"], **TINY), out, cpus=2, say=lambda _: None)
    return out, rows


def test_a_grid_of_two_personas_by_two_seeds_writes_four_runs_and_one_table(swept):
    out, rows = swept
    names = ["cat-micro-s0", "cat-micro-s1", "guppy-micro-s0", "guppy-micro-s1"]
    assert sorted(p.name for p in (out / "runs").iterdir()) == names
    for name in names:
        run = load_run(out / "runs" / name)  # each a finished run folder
        assert run.config["train"]["steps_per_epoch"] > 0 and run.config["results"]["steps"] == 10
    assert [r["job"] for r in rows] == names
    table = (out / "sweep.txt").read_text().splitlines()
    assert table[0].split()[:3] == ["job", "eval", "loss"] and len(table) == 5
    summary = json.loads((out / "sweep.json").read_text())
    for row in summary["jobs"]:
        assert 0 < row["eval_loss"] < 10 and 0 <= row["own"] <= 1 and row["tokens_per_s"] > 0
    # Seeds differ: the same persona's two runs are two models, not one copied.
    assert rows[0]["eval_loss"] != rows[1]["eval_loss"]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # OUT's marker lists every file the sweep wrote there (the datasets and runs have their own).
    marker = read_marker(out)
    written = {n for n in listing(out) if n != MARKER and not n.startswith(("data/", "runs/"))}
    assert marker["kind"] == "sweep" and set(marker["files"]) == written
    assert written == {*SUMMARY, *(f"logs/{name}.log" for name in names)}


def test_the_same_run_folder_twice_is_refused(swept, tmp_path):
    with pytest.raises(GuppyError, match="cat-micro-s0 is in the grid twice"):
        plan(Grid(personas=["cat"], presets=["micro"], seeds=[0, 0]))
    out, _ = swept
    before = (out / "sweep.txt").read_text()
    with pytest.raises(GuppyError, match="already holds a sweep. Add --force"):  # before any work
        run_sweep(Grid(personas=["cat"], **TINY), out, cpus=2, say=lambda _: None)
    assert (out / "sweep.txt").read_text() == before


def test_a_grid_file_and_its_mistakes(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("personas: [cat, guppy]\npresets: micro\nlrs: [0.003]\ntrain: {max_steps: 5}\n")
    read = read_grid(grid)
    assert read.presets == ["micro"] and read.lrs == [0.003] and read.train == {"max_steps": 5}
    assert [job.id for job in plan(read)] == ["cat-micro-lr0.003-s0", "guppy-micro-lr0.003-s0"]
    grid.write_text("personas: [cat]\nseed: [1]\n")
    result = CliRunner().invoke(cli, ["sweep", str(grid), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"error: {grid}:2:1: unknown key 'seed'. Use: conversations, cpus_per_job, "
        "eval_samples, lrs, offtopic_samples, personas, presets, seeds, train"
    )


def test_without_ray_the_command_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as where it is absent
    result = CliRunner().invoke(cli, ["sweep", "--persona", "cat", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {INSTALL}"
    assert not (tmp_path / "out").exists()


def test_a_users_log_is_never_overwritten_and_the_folder_stays_as_it_was(tmp_path):
    out = tmp_path / "mine"
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "cat-micro-s0.log").write_text("my notes\n")
    before = snapshot(out)
    for force in ([], ["--force"]):  # not guppyforge's: --force never replaces it either
        result = sweep("--persona", "cat", *SHORT, "--out", out, *force)
        assert result.exit_code == 1
        assert result.output.startswith(f"error: {out}: already exists and has no {MARKER}")
        assert snapshot(out) == before


def test_a_job_bigger_than_ray_is_refused_before_ray_starts(tmp_path, monkeypatch):
    import ray

    grid, out = tmp_path / "grid.yaml", tmp_path / "out"
    grid.write_text("personas: [cat]\npresets: [micro]\ncpus_per_job: 4\n")
    result = sweep(grid, "--cpus", "2", "--out", out)
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"error: {grid}:3:15: cpus_per_job 4: more CPUs than Ray has (--cpus 2), so no job "
        "would ever start. Ask for at most 2 per job, or give --cpus 4"
    )
    result = sweep("--persona", "cat", "--cpus", "2", "--cpus-per-job", "4", "--out", out)
    assert result.output.startswith("error: --cpus-per-job 4: more CPUs than Ray has (--cpus 2)")
    assert not ray.is_initialized() and not out.exists()
    # Without --cpus, the count of the Ray just started decides (a stand-in Ray of 2 cores).
    monkeypatch.setattr(ray, "init", lambda **_: None)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    result = sweep(grid, "--out", out)
    assert result.output.strip() == (
        f"error: {grid}:3:15: cpus_per_job 4: more CPUs than Ray has (2 here), so no job would "
        "ever start. Ask for at most 2 per job"
    )
    assert not out.exists()


def test_empty_lists_in_a_grid_are_refused_when_it_is_read(tmp_path):
    grid = tmp_path / "grid.yaml"
    for key in ("seeds", "presets"):
        grid.write_text(f"personas: [cat]\n{key}: []\n")
        result = sweep(grid, "--out", tmp_path / "out")
        assert result.exit_code == 1
        assert result.output.strip() == (
            f"error: {grid}:2:{len(key) + 3}: `{key}: []` lists nothing, so no job would run. "
            "List at least one value, or leave the key out for its default"
        )
    with pytest.raises(GuppyError, match="no seeds, so no job would run"):
        plan(Grid(personas=["cat"], seeds=[]))
    assert not (tmp_path / "out").exists()


def test_a_ray_address_without_the_client_extra_says_what_to_install(tmp_path, monkeypatch):
    import ray

    def init(**_):
        raise ValueError(NO_CLIENT)

    monkeypatch.setattr(ray, "init", init)
    out = tmp_path / "out"
    out.mkdir()  # the user's, empty: it stays so (no logs/, no datasets)
    address = "ray://127.0.0.1:10001"
    result = sweep("--persona", "cat", *SHORT[:-2], "--address", address, "--out", out)
    assert result.exit_code == 1
    assert result.output.strip() == (
        f'error: --address {address}: Ray Client is not installed. pip install "ray[client]" '
        "(the cluster's Ray version), or run on a node of the cluster with --address auto"
    )
    assert list(out.iterdir()) == []


def test_a_stopped_sweep_says_to_start_again_with_force(swept, tmp_path):
    out, _ = swept
    stopped = tmp_path / "stopped"
    shutil.copytree(out, stopped)
    for name in SUMMARY:  # stopped after its jobs began, before the table
        (stopped / name).unlink()
    (stopped / "notes.txt").write_text("mine\n")
    grid = tmp_path / "grid.yaml"
    grid.write_text("personas: [cat]\n" + TINY_FILE)
    result = sweep(grid, "--cpus", "2", "--out", stopped)
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"error: {stopped}: holds a sweep that did not finish (stopped?), and a sweep cannot "
        "resume. Add --force to start it again (that replaces only the files guppyforge wrote), "
        "or choose a new --out"
    )
    result = sweep(grid, "--cpus", "2", "--out", stopped, "--force")
    assert result.exit_code == 0, result.output
    assert (stopped / "notes.txt").read_text() == "mine\n"  # not guppyforge's: kept
    # The earlier sweep's logs went (its marker listed them); its other run folders are their own.
    assert [p.name for p in (stopped / "logs").iterdir()] == ["cat-micro-s0.log"]
    assert read_marker(stopped)["files"] == sorted([*SUMMARY, "logs/cat-micro-s0.log"])


def test_grid_errors_speak_of_the_grid_file(tmp_path):
    grid = tmp_path / "grid.yaml"
    cases = {
        "- cat\n": f"{grid}:1:1: top level is a list, not a mapping. A sweep grid is a mapping: "
        "start with `personas: [cat]`",
        "": f"{grid}: file is empty. A sweep grid needs at least `personas: [cat]`",
        "personas: [cat]\ntrain: {bogus_option: 1}\n": f"{grid}:2:9: train: unknown option "
        f"'bogus_option'. Use: {', '.join(TRAIN_KEYS)}",
        "personas: [cat]\nlrs: [1e-3, 0.001]\n": f"{grid}:2:13: lrs[1]: 0.001 is listed twice "
        "(lrs[0] too). List each value once",
        "personas: [cat, nosuch]\n": f"{grid}:1:17: personas[1]: no persona file 'nosuch' "
        "(beside the grid file) and no built-in persona of that name. See `guppyforge personas`",
    }
    for text, message in cases.items():
        grid.write_text(text)
        result = sweep(grid, "--out", tmp_path / "out")
        assert (result.exit_code, result.output.strip()) == (1, f"error: {message}")
    assert "max_steps" in TRAIN_KEYS and "lr" not in TRAIN_KEYS  # the grid's lrs set it
    # Near-equal rates are two jobs, each its own run folder; only equal ones are duplicates.
    grid.write_text("personas: [cat]\npresets: [micro]\nlrs: [0.001, 0.0010000001]\n")
    ids = [job.id for job in plan(read_grid(grid))]
    assert ids == ["cat-micro-lr0.001-s0", "cat-micro-lr0.0010000001-s0"]


def test_an_address_where_no_cluster_answers_is_one_line(tmp_path, monkeypatch):
    import ray

    def init(**_):  # what ray.init says for `--address auto` with no cluster running
        raise ConnectionError("Could not find any running Ray instance. Please specify the one")

    monkeypatch.setattr(ray, "init", init)
    out = tmp_path / "out"
    result = sweep("--persona", "cat", *SHORT[:-2], "--address", "auto", "--out", out)
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("error: --address auto: no Ray cluster answered")
    assert "ray start --head" in result.output and not out.exists()
