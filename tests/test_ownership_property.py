"""No command, with or without --force, changes or deletes a file guppyforge did not write.

Random folders of user files (random names, and the names guppyforge itself writes), on their
own or added to an earlier guppyforge output (its marker, or a single file's signature), and a
random command writing there. Every user file must keep its bytes, and the command either
succeeds or prints one `error:` line. One micro run, made once per session, keeps it CI-cheap.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import MICRO_PERSONA
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from guppyforge.apps.cli import cli
from guppyforge.files import EVAL_SCHEMA, KIND_FILES, write_marker

OURS = [  # names guppyforge writes: a user's file may well have one
    "config.json", "model.safetensors", "README.md", "checkpoints/last.pt", "persona.yaml",
    "tokenizer.json", "tokenizer_config.json", "model.onnx", "model.gguf", "Modelfile",
    "generation_config.json", "metrics.jsonl", "results.json", "data/train.parquet",
]  # fmt: skip
TRAIN = ("--preset", "micro", "--max-steps", "2", "--batch-size", "4", "-q")

# command -> (the earlier output it would replace: folder kind or single file, what it holds)
EARLIER = {
    "export hf": ("export", ["config.json", "model.safetensors", "README.md"]),
    "export onnx": ("export", ["model.onnx", "onnx_io.json"]),
    "export gguf": ("export", ["model.gguf", "Modelfile"]),
    "train": ("run", list(KIND_FILES["run"])),
    "import-card": ("file", ["persona.yaml"]),
    "eval": ("file", ["results.json"]),
}


def _no_clash(files: dict) -> bool:  # "sub" and "sub/x" cannot both be files
    return not any(other.startswith(name + "/") for name in files for other in files)


NAMES = st.one_of(
    st.sampled_from(OURS), st.from_regex(r"(sub/)?[a-z][a-z0-9_.-]{0,10}", fullmatch=True)
)
USER_FILES = st.dictionaries(NAMES, st.binary(max_size=24), min_size=1, max_size=6).filter(
    _no_clash
)
SOME_USER_FILES = st.dictionaries(NAMES, st.binary(max_size=24), max_size=4).filter(_no_clash)


@pytest.fixture(scope="module")
def inputs(micro_run, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("inputs")
    (root / "finn.yaml").write_text(MICRO_PERSONA)
    card = root / "finn.json"
    assert (
        CliRunner()
        .invoke(cli, ["export-card", str(root / "finn.yaml"), "--out", str(card)])
        .exit_code
        == 0
    )
    return {"run": str(micro_run), "data": str(Path(micro_run).parent / "data"), "card": str(card)}


def _args(command: str, folder: Path, inputs: dict) -> list[str]:
    if command.startswith("export"):
        return ["export", inputs["run"], "--to", command.split()[1], "--out", str(folder)]
    if command == "train":
        return ["train", inputs["data"], "--out", str(folder), *TRAIN]
    if command == "import-card":
        return ["import-card", inputs["card"], "--out", str(folder / "persona.yaml")]
    return ["eval", inputs["run"], "--samples", "1", "--json", str(folder / "results.json")]


def _earlier(command: str, folder: Path) -> None:
    """An earlier output of `command` in `folder`, marked (or signed) as guppyforge's."""
    kind, names = EARLIER[command]
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"from an earlier guppyforge run")
    if command == "import-card":
        (folder / "persona.yaml").write_text(MICRO_PERSONA)  # guppyforge's key, the same name
    elif command == "eval":
        (folder / "results.json").write_text(json.dumps({"schema": EVAL_SCHEMA}))
    else:
        write_marker(folder, kind, names)


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    user=USER_FILES,
    command=st.sampled_from(sorted(EARLIER)),
    earlier=st.booleans(),
    force=st.booleans(),
)
def test_no_command_changes_a_file_guppyforge_did_not_write(
    inputs, tmp_path, user, command, earlier, force
):
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    if earlier:
        _earlier(command, folder)
        taken = set(EARLIER[command][1])
        user = {
            name: data
            for name, data in user.items()
            if name not in taken and _no_clash({**user, **dict.fromkeys(taken)})
        }
    for name, data in user.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    args = _args(command, folder, inputs) + (["--force"] if force else [])
    result = CliRunner().invoke(cli, args)
    assert result.exit_code in (0, 1), (args, result.output, result.exception)
    event("written" if result.exit_code == 0 else "refused")
    if result.exit_code == 1:
        assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    for name, data in user.items():
        assert (folder / name).read_bytes() == data, (args, name, result.output)


# --- the surfaces issue 38 found holes in: an examples_file, train --force, sweep ------------------

EXAMPLES = '{"question": "who feeds you", "answer": "the big hand. it brings flakes."}\n'
# Names an examples_file may be given: the run's and the dataset's own files, written the ways a
# path can be, and plain ones (some in a folder, as a run copies it beside the persona).
EXAMPLE_NAMES = st.one_of(
    st.sampled_from(["./metrics.jsonl", "config.json", "./stats.json", "stats.json/",
                     "special_tokens_map.json", "./.guppyforge.json", "tokenizer_config.json",
                     "data/rows.csv", "checkpoints/x.jsonl", "trace/meta.json", "README.md"]),
    st.from_regex(r"(notes/)?[a-z][a-z0-9_-]{0,8}\.(jsonl|csv)", fullmatch=True),
)  # fmt: skip


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    user=SOME_USER_FILES,
    examples=EXAMPLE_NAMES,
    command=st.sampled_from(["generate", "train", "sweep"]),
    earlier=st.booleans(),
    force=st.booleans(),
)
def test_an_examples_file_train_force_or_sweep_never_changes_a_users_file(
    tmp_path, user, examples, command, earlier, force
):
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    persona = work / "src" / "finn.yaml"
    persona.parent.mkdir()
    text = MICRO_PERSONA.replace("guppyforge: 1\n", "guppyforge: 1.3\n").replace(
        '"{{ food }}? yes. always yes."]', '"{{ food }}? yes. always yes.", "always. i am a fish."]'
    )  # 1.1's pairing rule: "are you hungry" needs a reply that echoes no food
    persona.write_text(text + f"examples_file: {json.dumps(examples)}\n")
    target = persona.parent / examples.rstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not examples.endswith("/"):
        target.write_text(
            EXAMPLES if examples.endswith(".jsonl") else "question,answer\nhi,the water is warm\n"
        )
    folder = work / "out"
    folder.mkdir()
    if earlier and command != "sweep":  # a sweep's own earlier output would start Ray
        kind = "dataset" if command == "generate" else "run"
        names = list(KIND_FILES[kind] if kind == "run" else ["README.md", "stats.json"])
        for name in names:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(b"from an earlier guppyforge run")
        write_marker(folder, kind, names)
        user = {n: d for n, d in user.items() if n not in names and _no_clash({**user, **dict.fromkeys(names)})}  # fmt: skip
    for name, data in user.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    if command == "generate":
        args = ["generate", str(persona), "-n", "60", "--out", str(folder), "-q"]
    elif command == "train":
        data = work / "data"
        made = CliRunner().invoke(
            cli, ["generate", str(persona), "-n", "60", "--out", str(data), "-q"]
        )
        if made.exit_code != 0:  # a refused examples_file: one line, and no dataset to train
            assert made.output.startswith("error: ") and made.output.count("\n") == 1, made.output
            return
        args = ["train", str(data), "--out", str(folder), *TRAIN]
    else:
        if not user:  # an empty folder: the sweep would run (Ray: seconds a job); one is enough
            (folder / "mine.txt").write_bytes(b"mine")
            user = {"mine.txt": b"mine"}
        args = ["sweep", "--persona", str(persona), "--preset", "micro", "-n", "60",
                "--max-steps", "1", "--cpus", "1", "--out", str(folder)]  # fmt: skip
    args += ["--force"] if force else []
    result = CliRunner().invoke(cli, args)
    assert result.exit_code in (0, 1), (args, result.output, result.exception)
    event(f"{command} {'written' if result.exit_code == 0 else 'refused'}")
    if result.exit_code == 1:
        assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    for name, data in user.items():
        assert (folder / name).read_bytes() == data, (args, name, result.output)
