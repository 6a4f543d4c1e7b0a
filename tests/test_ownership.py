"""The ownership rule (guppyforge/files.py), command by command, on folders of user files.

Without --force nothing that exists is replaced; with --force only what guppyforge wrote is, and
the user's files survive every command. Each test is one reported way of losing files: only a
marker (or a single file's signature) proves a file is guppyforge's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from guppyforge.apps.cli import cli
from guppyforge.dataset.folder import clean_leftovers
from guppyforge.files import LOCK, MARKER, write_marker

USER_FILES = {
    "src/main.py": "print('mine')\n",
    "thesis.md": "# my thesis\n",
    "data/measurements.csv": "t,v\n1,2\n",
    "README.md": "# my project\n",
    "config.json": '{"mine": true}\n',
    "metrics.jsonl": '{"mine": 1}\n',
}
PERSONA = """\
guppyforge: 1
name: finn
display_name: Finn
summary: A tiny fish for tests.
grammar:
  food: [worms, flakes, bugs, shrimp, crumbs, moss]
topics:
  food:
    ask: ["are you hungry", "do you like {{ food }}", "what about {{ food }}"]
    say: ["{{ food }}? yes.", "{{ food }}. always {{ food }}."]
"""


def invoke(*args) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


def add_user_files(folder: Path) -> None:
    for name, text in USER_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def assert_kept(folder: Path) -> None:
    for name, text in USER_FILES.items():
        assert (folder / name).read_text() == text, f"{name} was changed"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def refused(result, *needles: str) -> str:
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    for needle in needles:
        assert needle in result.output, result.output
    return result.output


@pytest.fixture
def persona(tmp_path) -> Path:
    path = tmp_path / "finn.yaml"
    path.write_text(PERSONA)
    return path


@pytest.fixture(scope="module")
def data_dir(micro_run) -> Path:
    return Path(micro_run).parent / "data"


TRAIN = ("--preset", "micro", "--max-steps", "2", "--batch-size", "4", "-q")


# --- generate ------------------------------------------------------------------------------------


def test_generate_force_keeps_a_dataset_folder_that_also_holds_user_files(persona, tmp_path):
    proj = tmp_path / "proj"
    assert invoke("generate", persona, "-n", "20", "--out", proj, "-q").exit_code == 0
    add_user_files(proj)
    line = refused(invoke("generate", persona, "-n", "20", "--out", proj, "-q", "--force"),
                   "guppyforge did not write", "data/measurements.csv")  # fmt: skip
    assert "and 2 more" in line  # a few named, the rest counted
    assert_kept(proj)
    assert (proj / "stats.json").is_file()  # the dataset itself is untouched too


def test_generate_without_force_refuses_a_user_folder(persona, tmp_path):
    add_user_files(tmp_path / "proj")
    refused(invoke("generate", persona, "--out", tmp_path / "proj", "-q"), "already exists")
    assert_kept(tmp_path / "proj")


def test_generate_refuses_the_root_and_a_file_as_out(persona, tmp_path):
    refused(invoke("generate", "guppy", "-n", "20", "--out", "/", "--force", "-q"), "--force")
    (tmp_path / "file").write_text("mine")
    refused(
        invoke("generate", persona, "--out", tmp_path / "file", "--force", "-q"), "not a folder"
    )
    refused(invoke("generate", persona, "--out", tmp_path / "file" / "sub", "-q"), "in the way")
    assert (tmp_path / "file").read_text() == "mine"


def test_generate_on_an_unwritable_place_is_one_line(persona):
    # /proc takes no new folders, even for root (a chmod'ed folder would not stop root).
    refused(invoke("generate", persona, "-n", "20", "--out", "/proc/guppy-out", "-q"),
            "cannot write")  # fmt: skip


def test_a_killed_generates_leftover_is_cleaned_only_when_dead_and_ours(persona, tmp_path):
    out = tmp_path / "d"
    dead, alive, foreign = (tmp_path / f"d.tmp-{pid}" for pid in (2**22 + 7, 1, 2**22 + 9))
    for folder in (dead, alive):
        folder.mkdir()
        write_marker(folder, "dataset", ["data/*.parquet"])
        (folder / "data").mkdir()
    add_user_files(foreign)  # a dead pid, but not our folder: the user's
    assert invoke("generate", persona, "-n", "20", "--out", out, "-q").exit_code == 0
    assert not dead.exists()
    assert alive.exists() and (alive / MARKER).is_file()  # pid 1 is running: not ours to judge
    assert_kept(foreign)
    assert clean_leftovers(out) == []


# --- train ---------------------------------------------------------------------------------------


def test_train_never_replaces_user_files(data_dir, tmp_path):
    user = tmp_path / "userdir"
    add_user_files(user)
    line = refused(invoke("train", data_dir, "--out", user, *TRAIN), "no .guppyforge.json")
    assert "--force to" not in line  # --force would be refused too: never suggested
    assert_kept(user)
    refused(invoke("train", data_dir, "--out", user, *TRAIN, "--force"), "README.md", "new --out")
    assert_kept(user)


def test_train_refuses_the_dataset_folder_itself(data_dir, tmp_path):
    dsx = tmp_path / "dsx"
    shutil.copytree(data_dir, dsx)
    (dsx / "README.md").write_text("the dataset card\n")
    for out in (dsx, dsx / "run"):
        refused(invoke("train", dsx, "--out", out, *TRAIN, "--force"), "input")
    assert (dsx / "README.md").read_text() == "the dataset card\n"
    assert not (dsx / "run").exists()


def test_train_force_replaces_a_run_and_keeps_the_users_notes(data_dir, tmp_path):
    run = tmp_path / "run"
    assert invoke("train", data_dir, "--out", run, *TRAIN).exit_code == 0
    (run / "notes.txt").write_text("what I tried")
    refused(invoke("train", data_dir, "--out", run, *TRAIN), "already holds a run")
    result = invoke("train", data_dir, "--out", run, *TRAIN, "--force", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["train"]["seed"] == 3
    assert (run / "notes.txt").read_text() == "what I tried"


def test_every_file_train_writes_is_listed_in_its_marker(data_dir, tmp_path):
    run = tmp_path / "run"
    assert invoke("train", data_dir, "--out", run, *TRAIN).exit_code == 0
    listed = set(json.loads((run / MARKER).read_text())["files"])
    written = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()} - {MARKER}
    assert written - listed == set()  # special_tokens_map.json was once missing: --force took it
    assert not (run / LOCK).exists()  # released at the end


def test_a_run_being_written_is_not_resumed_or_forced_by_a_second_train(data_dir, tmp_path):
    run = tmp_path / "run"
    base = ("train", data_dir, "--out", run, "--preset", "micro", "--batch-size", "4", "-q")
    assert invoke(*base, "--max-steps", "4", "--stop-after", "2").exit_code == 0
    with subprocess.Popen(["sleep", "60"]) as other:  # a live process holds the run's lock
        try:
            held = {"pid": other.pid, "host": os.uname().nodename}
            (run / LOCK).write_text(json.dumps(held))
            before = snapshot(run)
            for flag in ("--resume", "--force"):
                refused(invoke(*base, flag), f"pid {other.pid}", "is writing this run")
            assert snapshot(run) == before
        finally:
            other.kill()
    # Its process is gone: the lock is stale, and the run resumes (and lets the lock go).
    assert invoke(*base, "--resume").exit_code == 0
    assert not (run / LOCK).exists()


def test_a_run_stopped_before_its_first_checkpoint_says_to_start_again(data_dir, tmp_path):
    run = tmp_path / "run"
    assert invoke("train", data_dir, "--out", run, *TRAIN).exit_code == 0
    for name in ("checkpoints/last.pt", "config.json"):  # what a Ctrl-C during set-up leaves
        (run / name).unlink()
    refused(invoke("train", data_dir, "--out", run, *TRAIN), "nothing to resume", "--force")
    refused(invoke("train", data_dir, "--out", run, *TRAIN, "--resume"), "--force instead")
    assert invoke("train", data_dir, "--out", run, *TRAIN, "--force").exit_code == 0


def test_train_nproc_is_bounded_by_the_cores(data_dir, tmp_path):
    cores = len(os.sched_getaffinity(0))
    line = refused(invoke("train", data_dir, "--out", tmp_path / "run", *TRAIN, "--nproc",
                          cores + 1), f"this machine has {cores} CPU cores")  # fmt: skip
    assert f"--nproc {cores} or fewer" in line and not (tmp_path / "run").exists()


# --- export --------------------------------------------------------------------------------------


def test_export_force_refuses_an_ordinary_folder(micro_run, tmp_path):
    add_user_files(tmp_path / "out")
    line = refused(invoke("export", micro_run, "--to", "hf", "--out", tmp_path / "out", "--force"),
                   "README.md")  # fmt: skip
    assert "config.json" in line
    assert_kept(tmp_path / "out")
    refused(invoke("export", micro_run, "--to", "hf", "--out", tmp_path / "out"), "already exists")
    assert_kept(tmp_path / "out")


def test_export_force_replaces_its_own_export_only(micro_run, tmp_path):
    out = tmp_path / "out"
    assert invoke("export", micro_run, "--to", "onnx", "--out", out).exit_code == 0
    (out / "notes.txt").write_text("mine")
    result = invoke("export", micro_run, "--to", "hf", "--out", out, "--force")
    assert result.exit_code == 0, result.output
    assert not (out / "model.onnx").exists() and (out / "model.safetensors").is_file()
    assert (out / "notes.txt").read_text() == "mine"


# --- cards, personas, eval --json ----------------------------------------------------------------


def test_export_card_never_overwrites_a_file_it_did_not_write(persona, tmp_path):
    card = tmp_path / "mycard.json"
    card.write_text('{"my": "own card"}\n')
    refused(invoke("export-card", persona, "--out", card), "already exists")
    refused(invoke("export-card", persona, "--out", card, "--force"), "not a card guppyforge")
    assert card.read_text() == '{"my": "own card"}\n'
    card.unlink()
    assert invoke("export-card", persona, "--out", card).exit_code == 0
    assert invoke("export-card", persona, "--out", card, "--force").exit_code == 0  # ours: ok
    refused(invoke("export-card", persona, "--out", persona, "--force"), "input file itself")


def test_import_card_force_replaces_only_a_persona_file(persona, tmp_path):
    card = tmp_path / "finn.json"
    assert invoke("export-card", persona, "--out", card).exit_code == 0
    thesis = tmp_path / "thesis.md"
    thesis.write_text("# my thesis\n")
    refused(invoke("import-card", card, "--out", thesis), "already exists")
    refused(invoke("import-card", card, "--out", thesis, "--force"), "not a guppyforge persona")
    assert thesis.read_text() == "# my thesis\n"


def test_new_persona_never_replaces_a_file(tmp_path):
    (tmp_path / "mine.yaml").write_text("my own words\n")
    refused(invoke("new-persona", "mine", "--dir", tmp_path), "already exists")
    assert (tmp_path / "mine.yaml").read_text() == "my own words\n"
    (tmp_path / "afile").write_text("x")
    refused(invoke("new-persona", "x", "--dir", tmp_path / "afile"), "not a folder")


def test_eval_json_replaces_only_an_earlier_result(micro_run, tmp_path):
    mine = tmp_path / "results.json"
    mine.write_text('{"my": "results"}\n')
    base = ("eval", micro_run, "--samples", "1")
    refused(invoke(*base, "--json", mine), "already exists")
    refused(invoke(*base, "--json", mine, "--force"), "not an eval result")
    assert mine.read_text() == '{"my": "results"}\n'
    out = tmp_path / "eval.json"
    assert invoke(*base, "--json", out).exit_code == 0
    assert invoke(*base, "--json", out, "--force").exit_code == 0
    refused(invoke(*base, "--json", Path(micro_run) / "eval.json"), "input")


def test_a_folder_from_before_markers_is_refused_with_how_to_proceed(persona, tmp_path):
    out = tmp_path / "d"
    assert invoke("generate", persona, "-n", "20", "--out", out, "-q").exit_code == 0
    os.remove(out / MARKER)  # as written by an older guppyforge: nothing proves it is ours
    before = snapshot(out)
    for force in ((), ("--force",)):
        line = refused(invoke("generate", persona, "-n", "20", "--out", out, "-q", *force),
                       "no .guppyforge.json", "new --out", "move the folder")  # fmt: skip
        assert "--force to" not in line
    assert snapshot(out) == before


def test_temp_files_a_killed_train_left_are_removed_on_resume(data_dir, tmp_path):
    run = tmp_path / "run"
    base = ("train", data_dir, "--out", run, "--preset", "micro", "--batch-size", "4", "-q")
    assert invoke(*base, "--max-steps", "4", "--stop-after", "2").exit_code == 0
    leftover = run / "checkpoints" / ".last.pt.k3j9x.tmp"  # what kill -9 mid-save leaves
    leftover.write_bytes(b"half a checkpoint")
    (run / "notes.tmp").write_text("mine")  # not a temp name of ours
    assert invoke(*base, "--resume").exit_code == 0
    assert not leftover.exists() and (run / "notes.tmp").read_text() == "mine"


def test_a_run_that_failed_before_writing_anything_can_be_retried(data_dir, tmp_path):
    run, empty = tmp_path / "run", tmp_path / "empty"
    empty.mkdir()
    refused(invoke("train", empty, "--out", run, *TRAIN), "not a dataset folder")
    assert (run / MARKER).is_file()  # claimed, then the data failed to load
    assert invoke("train", data_dir, "--out", run, *TRAIN).exit_code == 0


# --- what a careless --force met (issue 19): only a marker proves a folder or file is ours -------

HF_FOLDER = {  # a user's own Hugging Face model folder: no marker
    "config.json": b'{"model_type": "llama"}\n',
    "model.safetensors": b"\x00my weights",
    "README.md": b"# my model\n",
    "tokenizer.json": b'{"mine": true}\n',
    "tokenizer_config.json": b"{}\n",
    "model.onnx": b"my onnx",
    "model.gguf": b"GGUF mine",
    "Modelfile": b"FROM ./model.gguf\n",
}


def make_folder(folder: Path, files: dict[str, bytes]) -> dict[str, bytes]:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return snapshot(folder)


@pytest.mark.parametrize("target", ["hf", "onnx", "gguf"])
def test_export_force_into_a_users_model_folder_keeps_every_file(micro_run, tmp_path, target):
    before = make_folder(tmp_path / "mymodel", HF_FOLDER)
    export = ("export", micro_run, "--to", target, "--out", tmp_path / "mymodel")
    line = refused(invoke(*export), "no .guppyforge.json", "new --out")
    assert "--force to" not in line  # it would be refused too: never suggested
    refused(invoke(*export, "--force"), "no .guppyforge.json", "even with --force")
    assert snapshot(tmp_path / "mymodel") == before


@pytest.mark.parametrize("extra", [{}, {"checkpoints/last.pt": b"my checkpoint"}])
def test_train_force_on_a_users_folder_keeps_every_file(data_dir, tmp_path, extra):
    before = make_folder(tmp_path / "mymodel", HF_FOLDER | extra)
    for force in ((), ("--force",)):
        refused(invoke("train", data_dir, "--out", tmp_path / "mymodel", *TRAIN, *force),
                "no .guppyforge.json")  # fmt: skip
    assert snapshot(tmp_path / "mymodel") == before


def test_import_card_force_never_replaces_a_compose_file_or_another_persona(persona, tmp_path):
    card = tmp_path / "finn.json"
    assert invoke("export-card", persona, "--out", card).exit_code == 0
    compose = tmp_path / "compose.yaml"
    compose.write_text("services:\n  web:\n    image: nginx\n")
    other = tmp_path / "persona.yaml"  # a run's persona, of another character
    other.write_text(PERSONA.replace("name: finn", "name: mochi"))
    for path in (compose, other):
        before = path.read_bytes()
        line = refused(invoke("import-card", card, "--out", path), "not a guppyforge persona")
        assert "--force to" not in line and "Pass --force" not in line
        refused(invoke("import-card", card, "--out", path, "--force"), "not even with --force")
        assert path.read_bytes() == before
    same = tmp_path / "finn.yaml"
    same.write_text(PERSONA)  # guppyforge's key and the same name: ours to replace
    refused(invoke("import-card", card, "--out", same), "Pass --force")
    assert invoke("import-card", card, "--out", same, "--force").exit_code == 0


def test_eval_json_force_never_replaces_a_users_json_with_the_same_keys(micro_run, tmp_path):
    mine = tmp_path / "results.json"
    mine.write_text('{"run": "mine", "probe_pass_rate": 0.5}\n')
    base = ("eval", micro_run, "--samples", "1", "--json", mine)
    refused(invoke(*base), "not an eval result", "--json")
    refused(invoke(*base, "--force"), "not even with --force")
    assert mine.read_text() == '{"run": "mine", "probe_pass_rate": 0.5}\n'


def test_force_never_follows_a_marker_out_of_its_folder(micro_run, tmp_path):
    (tmp_path / "precious.txt").write_text("mine")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").mkdir()
    (out / "sub" / "note.md").write_text("mine too")
    # A folder from a stranger whose marker names files outside it (and one inside by `..`).
    write_marker(out, "export", ["../precious.txt", "/etc/hostname", "sub/../sub/note.md"])
    result = invoke("export", micro_run, "--to", "hf", "--out", out, "--force")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "precious.txt").read_text() == "mine"
    assert (out / "sub" / "note.md").read_text() == "mine too"


def test_force_replaces_exactly_the_files_the_marker_lists(micro_run, tmp_path):
    out = tmp_path / "out"
    assert invoke("export", micro_run, "--to", "gguf", "--out", out).exit_code == 0
    marker = json.loads((out / MARKER).read_text())
    assert marker == {"guppyforge": "export", "files": ["Modelfile", "model.gguf"]}  # by name
    (out / "notes.txt").write_text("mine")
    (out / "README.md").write_text("my readme")  # a name hf writes, but not listed: the user's
    refused(invoke("export", micro_run, "--to", "hf", "--out", out, "--force"),
            "README.md", "never replaces them")  # fmt: skip
    assert (out / "README.md").read_text() == "my readme" and (out / "model.gguf").is_file()
    (out / "README.md").unlink()
    assert invoke("export", micro_run, "--to", "hf", "--out", out, "--force").exit_code == 0
    assert not (out / "model.gguf").exists() and not (out / "Modelfile").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert "notes.txt" not in json.loads((out / MARKER).read_text())["files"]


@pytest.mark.parametrize("error", ["oserror", "safetensors"])
def test_export_on_a_full_disk_leaves_the_earlier_export_as_it_was(
    micro_run, tmp_path, monkeypatch, error
):
    import errno

    import safetensors

    import guppyforge.apps.export.hf as hf

    out = tmp_path / "out"
    assert invoke("export", micro_run, "--to", "hf", "--out", out).exit_code == 0
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)

    def full_disk(*args, **kwargs):
        if error == "oserror":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise safetensors.SafetensorError("Error while serializing: IoError(Os { code: 28, "
                                          'kind: StorageFull, message: "No space left on device" })')  # fmt: skip

    monkeypatch.setattr(hf, "save_file", full_disk)
    refused(invoke("export", micro_run, "--to", "hf", "--out", out, "--force"),
            "No space left on device", "nothing was changed")  # fmt: skip
    assert snapshot(out) == before  # no file changed, no staging folder left
    refused(invoke("export", micro_run, "--to", "hf", "--out", tmp_path / "new"), "No space left")
    assert not (tmp_path / "new").exists()  # a new folder that could not be written is not left


def test_a_killed_exports_staging_folder_is_removed_by_the_next(micro_run, tmp_path):
    from guppyforge.files import check_folder

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with check_folder(out, "export", False, files=("model.gguf",)).staged() as stage:
            (stage / "model.gguf").write_bytes(b"half")
            os.rename(stage, out / ".guppyforge.tmp-killed")  # as if killed: it stays behind
            raise KeyboardInterrupt
    assert (out / ".guppyforge.tmp-killed" / MARKER).is_file()
    assert invoke("export", micro_run, "--to", "gguf", "--out", out).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "Modelfile", "model.gguf"]
