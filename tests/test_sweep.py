"""`guppyforge sweep`: a grid of training jobs as Ray tasks, each its own run folder, one table."""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from guppyforge.apps.cli import cli
from guppyforge.apps.sweep import INSTALL, Grid, plan, read_grid, run_sweep
from guppyforge.errors import GuppyError
from guppyforge.train.run_folder import load_run

# Two built-in personas x two seeds, micro: seconds per job, 2 CPUs for a local Ray (the test
# extra installs ray; without it these fail with the install line, they are not skipped).
TINY = dict(conversations=300, train={"max_steps": 10, "batch_size": 4}, offtopic_samples=2)
TINY |= dict(eval_samples=1, presets=["micro"], seeds=[0, 1])


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


def test_the_same_run_folder_twice_is_refused(swept, tmp_path):
    with pytest.raises(GuppyError, match="cat-micro-s0 is in the grid twice"):
        plan(Grid(personas=["cat"], presets=["micro"], seeds=[0, 0]))
    out, _ = swept
    before = (out / "sweep.txt").read_text()
    with pytest.raises(GuppyError, match="already holds a run"):  # before any work starts
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
