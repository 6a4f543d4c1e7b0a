"""Issue 15's failures, one test each: one-line errors, damaged run files, clean stops.

Every user error is one `error:` line (exit 1, or 2 for a bad option value), never a traceback.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import bounded_work
from safetensors.torch import load_file, save_file

import guppyforge.train.loop as train_module
from guppyforge.apps.cli import cli
from guppyforge.errors import GuppyError
from guppyforge.model.run import load_run

TRAIN = ("--preset", "micro", "--max-steps", "2", "--batch-size", "4", "-q")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line(result, *needles: str, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output
    return result.output


@pytest.fixture(scope="module")
def data_dir(micro_run) -> Path:
    return Path(micro_run).parent / "data"


@pytest.fixture
def run_copy(micro_run, tmp_path) -> Path:
    """A copy of the micro run to damage."""
    return Path(shutil.copytree(micro_run, tmp_path / "run"))


# --- numbers and devices -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--seed", "-1"], "--seed -1"),
        (["--lr", "-1"], "--lr -1"),
        (["--lr", "nan"], "--lr nan"),
        (["--lr", "inf"], "--lr inf"),
        (["--epochs", "0"], "--epochs 0"),
        (["--max-minutes", "-1"], "--max-minutes -1"),
        (["--max-minutes", "nan"], "--max-minutes nan"),
        (["--batch-size", "0"], "--batch-size"),
        (["--device", "mps"], "--device mps"),
    ],
)
def test_train_refuses_bad_numbers_and_missing_devices(data_dir, tmp_path, args, needle):
    if args[:2] == ["--device", "mps"] and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    one_line(invoke("train", data_dir, "--out", tmp_path / "run", *TRAIN, *args), needle)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_train_as_a_library_refuses_bad_numbers_too(data_dir, tmp_path):
    from guppyforge.train.loop import train

    for bad in ({"lr": float("nan")}, {"epochs": 0}, {"seed": -1}, {"max_minutes": -1.0}):
        with pytest.raises(GuppyError, match=next(iter(bad)).replace("_", "-")):
            train(data_dir, tmp_path / "run", preset="micro", progress=False, **bad)


@pytest.mark.parametrize(
    "command",
    [
        ["chat", "RUN", "--prompt", "hi", "--temperature", "nan"],
        ["chat", "RUN", "--prompt", "hi", "--top-p", "nan"],
        ["chat", "RUN", "--prompt", "hi", "--temperature", "inf"],
        ["eval", "RUN", "--temperature", "nan"],
        ["eval", "RUN", "--min-pass", "nan"],
        ["serve", "RUN", "--port", "70000"],
        ["generate", "guppy", "--seed", "-1", "--out", "X"],
    ],
)
def test_bad_option_values_are_one_line(micro_run, tmp_path, command):
    command = [str(micro_run) if c == "RUN" else str(tmp_path / "x") if c == "X" else c
               for c in command]  # fmt: skip
    one_line(invoke(*command), "Invalid value", code=2)


def test_the_engine_refuses_nan_sampling_options(micro_run):
    from guppyforge.model.engine import Engine

    engine = Engine.from_run(load_run(micro_run))
    with pytest.raises(GuppyError, match="temperature nan"):
        engine.reply([{"role": "user", "content": "hi"}], temperature=float("nan"))


# --- damaged run files ---------------------------------------------------------------------------


def test_absurd_config_sizes_are_refused_before_allocating(run_copy):
    config = json.loads((run_copy / "config.json").read_text())
    config["model"]["vocab_size"] = 10**12
    (run_copy / "config.json").write_text(json.dumps(config))
    with bounded_work(50_000):  # measured ~640
        with pytest.raises(GuppyError, match=r"config.json: model.vocab_size: 1000000000000"):
            load_run(run_copy)
    config["model"].update(vocab_size=512, d_model=60000, d_ff=200000)
    (run_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(GuppyError, match="parameters, more than"):
        load_run(run_copy)


def test_a_config_that_does_not_fit_the_weights_names_both_files(run_copy):
    config = json.loads((run_copy / "config.json").read_text())
    config["model"]["n_layer"] = 3
    (run_copy / "config.json").write_text(json.dumps(config))
    line = one_line(invoke("chat", run_copy, "--prompt", "hi"), "model.safetensors")
    assert "config.json" in line and "different runs" in line


def test_weights_with_nan_are_refused_at_load(run_copy):
    state = load_file(run_copy / "model.safetensors")
    state["h.0.attn.c_attn.weight"][0, 0] = float("nan")
    save_file(state, run_copy / "model.safetensors", metadata={"format": "pt"})
    for command in (["chat", run_copy, "--prompt", "hi", "--temperature", "0"],
                    ["eval", run_copy, "--samples", "1"],
                    ["serve", run_copy, "--port", "0"]):  # fmt: skip
        one_line(invoke(*command), "model.safetensors", "NaN or infinity")


def test_a_truncated_tokenizer_is_named(run_copy):
    text = (run_copy / "tokenizer.json").read_text()
    (run_copy / "tokenizer.json").write_text(text[: len(text) // 2])
    one_line(invoke("chat", run_copy, "--prompt", "hi"), "tokenizer.json: unreadable")


def test_resume_with_a_truncated_tokenizer_is_one_line(data_dir, tmp_path):
    run = tmp_path / "run"
    base = ("train", data_dir, "--out", run, "--preset", "micro", "--batch-size", "4", "-q")
    assert invoke(*base, "--max-steps", "4", "--stop-after", "2").exit_code == 0
    text = (run / "tokenizer.json").read_text()
    (run / "tokenizer.json").write_text(text[:100])
    one_line(invoke(*base, "--resume"), "tokenizer.json: unreadable")


def test_a_run_stopped_by_a_kill_says_resume(data_dir, tmp_path):
    run = tmp_path / "run"
    base = ("train", data_dir, "--out", run, "--preset", "micro", "--batch-size", "4", "-q")
    assert invoke(*base, "--max-steps", "4", "--stop-after", "2").exit_code == 0
    assert not (run / "config.json").exists()  # what a kill leaves: a checkpoint, no config
    one_line(invoke("chat", run, "--prompt", "hi"), "--resume", "stopped before the end")


def test_ctrl_c_during_train_exits_130_with_a_resume_hint(data_dir, tmp_path, monkeypatch):
    real_step, calls = train_module.train_step, []

    def step_then_ctrl_c(*args):
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)
        return real_step(*args)

    monkeypatch.setattr(train_module, "train_step", step_then_ctrl_c)
    run = tmp_path / "run"
    result = invoke("train", data_dir, "--out", run, "--preset", "micro", "--max-steps", "9",
                    "--batch-size", "4")  # fmt: skip
    assert result.exit_code == 130, result.output
    assert "--resume" in result.output and "interrupted" in result.output
    assert (run / "checkpoints" / "last.pt").is_file()


def test_a_damaged_parquet_file_is_named(data_dir, tmp_path):
    data = Path(shutil.copytree(data_dir, tmp_path / "data"))
    (data / "data" / "test-00000-of-00001.parquet").write_bytes(b"PAR1 garbled PAR1")
    one_line(invoke("train", data, "--out", tmp_path / "run", *TRAIN), "test-00000-of-00001")


# --- personas, cards, terminal output ------------------------------------------------------------


def persona_text(say: str = "{{ food }}.", extra: str = "", name: str = "finn") -> str:
    return (f"guppyforge: 1\nname: {name}\ndisplay_name: Finn\nsummary: A fish.\n{extra}"
            f"grammar:\n  food: [worms, flakes]\ntopics:\n  t:\n    ask: [hi]\n"
            f"    say: [{json.dumps(say)}]\n")  # fmt: skip


@pytest.mark.parametrize(
    "say",
    [
        "{{ " + "(" * 120 + "food" + ")" * 120 + " }}",
        "{{ " + "not " * 400 + "food }}",
        "{{ food" + " | upper" * 300 + " }}",
        "{% if food %}" * 60 + "x" + "{% endif %}" * 60,
    ],
)
def test_deeply_nested_templates_hit_a_limit_not_the_recursion_limit(tmp_path, say):
    (tmp_path / "p.yaml").write_text(persona_text(say))
    one_line(invoke("validate", tmp_path / "p.yaml"), "topics.t.say[0]")


def test_a_5001_digit_spec_version_is_one_line(tmp_path):
    (tmp_path / "p.yaml").write_text("guppyforge: " + "9" * 5001 + "\nname: x\n")
    one_line(invoke("validate", tmp_path / "p.yaml"), "p.yaml:1:13", "too long")


def test_card_depth_and_size_get_their_own_messages(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text('{"spec": "chara_card_v2", "data": ' + "[" * 100_000 + "]" * 100_000 + "}")
    one_line(invoke("import-card", deep, "--out", tmp_path / "p.yaml"), "nested more than 64")
    big = tmp_path / "big.json"
    big.write_text('{"name": "' + "x" * (33 << 20) + '", "description": ""}')
    line = one_line(invoke("import-card", big, "--out", tmp_path / "p.yaml"), "32 MiB limit")
    assert "PNG" not in line


def test_import_card_never_writes_a_persona_that_fails_validate(tmp_path):
    nested: object = "deep"
    for _ in range(30):
        nested = [nested]
    card = {"spec": "chara_card_v2", "spec_version": "2.0",
            "data": {"name": "Mo\x1b[31mchi\x07", "description": "A cat.\x1b]0;owned\x07",
                     "first_mes": "Hello\x1b[2J!", "extensions": {"lore": nested}}}  # fmt: skip
    (tmp_path / "c.json").write_text(json.dumps(card))
    out = tmp_path / "p.yaml"
    one_line(invoke("import-card", tmp_path / "c.json", "--out", out), "would not validate")
    assert not out.exists()
    card["data"]["extensions"] = {}
    (tmp_path / "c.json").write_text(json.dumps(card))
    assert invoke("import-card", tmp_path / "c.json", "--out", out).exit_code == 0
    assert "\x1b" not in out.read_text() and "\\e" not in out.read_text()
    assert invoke("validate", out).exit_code == 0


def test_preview_escapes_terminal_control_codes(tmp_path):
    (tmp_path / "p.yaml").write_text(persona_text("{{ food }}\x1b[2J\x1b]0;pwned\x07 ok"))
    result = invoke("preview", tmp_path / "p.yaml", "-n", "1")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "\\x1b[2J" in result.output


def test_chat_escapes_control_codes_in_replies(micro_run, monkeypatch):
    from guppyforge.apps import chat

    monkeypatch.setattr(chat.Engine, "stream", lambda self, h, **o: iter(["hi\x1b[2J", "\x07"]))
    result = invoke("chat", micro_run, "--prompt", "hi")
    assert result.exit_code == 0 and result.output == "hi\\x1b[2J\\x07\n"


def test_eval_warns_when_the_persona_is_another_character(micro_run, tmp_path):
    (tmp_path / "cat.yaml").write_text(persona_text(name="cat"))
    result = CliRunner().invoke(cli, ["eval", str(micro_run), "--persona",
                                      str(tmp_path / "cat.yaml"), "--samples", "1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "'cat'" in result.output and "'finn'" in result.output


def test_an_edited_round_trip_card_is_not_imported(tmp_path):
    card = tmp_path / "c.json"
    assert invoke("export-card", "cat", "--out", card).exit_code == 0
    data = json.loads(card.read_text())
    ours = data["data"]["extensions"]["guppyforge"]
    ours["yaml"] = ours["yaml"].replace("{{ spot }}", "{{ spot }", 1)  # found by the fuzz test
    card.write_text(json.dumps(data))
    one_line(invoke("import-card", card, "--out", tmp_path / "p.yaml"), "would not validate")
    assert not (tmp_path / "p.yaml").exists()


def test_a_config_with_a_list_for_activation_is_one_line(run_copy):  # found by the fuzz test
    config = json.loads((run_copy / "config.json").read_text())
    config["model"]["activation"] = []
    (run_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(GuppyError, match="model.activation"):
        load_run(run_copy)


def test_a_card_with_a_5001_digit_number_is_one_line(tmp_path):  # found by the fuzz test
    card = tmp_path / "c.json"
    card.write_text('{"name": "Mo", "description": "", "age": ' + "9" * 5001 + "}")
    one_line(invoke("import-card", card, "--out", tmp_path / "p.yaml"), "not valid JSON")


# --- issue 19: inputs checked before use ------------------------------------------------------


def _dataset(folder: Path, messages: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "data").mkdir(parents=True)
    for split in ("train", "test"):
        pq.write_table(pa.table(messages), folder / "data" / f"{split}-00000-of-00001.parquet")
    return folder


GOOD = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


@pytest.mark.parametrize(
    "messages, needle",
    [
        ({"text": ["a"] * 6}, "no 'messages' column (it has: text)"),
        ({"messages": [GOOD] * 3 + [None] + [GOOD] * 2}, "row 3: 'messages' is null"),
        ({"messages": [GOOD] * 4 + [[]] + [GOOD]}, "row 4: 'messages' is an empty list"),
        ({"messages": [GOOD, [{"role": "user", "content": None}]] + [GOOD] * 4},
         "row 1: a message with no 'content'"),
        ({"messages": ["hello"] * 6}, "holds string, not lists of {role, content}"),
    ],
)  # fmt: skip
def test_a_dataset_with_bad_messages_names_the_file_and_row(tmp_path, messages, needle):
    data = _dataset(tmp_path / "d", messages)
    line = one_line(invoke("train", data, "--out", tmp_path / "run", *TRAIN), needle)
    assert "test-00000-of-00001.parquet" in line  # the file, first in reading order


def test_a_card_with_more_text_than_a_persona_holds_is_refused_before_conversion(
    tmp_path, monkeypatch
):
    import guppyforge.cards as cards

    def never(card):
        raise AssertionError("converted a card that could never fit")

    monkeypatch.setattr(cards, "card_to_persona", never)
    text = "She talks to {{user}} about the tides. " * 60_000  # ~2.3 MiB: over the 1 MiB limit
    card = {
        "spec": "chara_card_v2",
        "spec_version": "2.0",
        "data": {"name": "Big", "description": text},
    }
    (tmp_path / "big.json").write_text(json.dumps(card))
    one_line(invoke("import-card", tmp_path / "big.json", "--out", tmp_path / "big.yaml"),
             "MiB of text", "1 MiB a persona may hold")  # fmt: skip
    assert not (tmp_path / "big.yaml").exists()


def test_the_card_depth_check_strips_strings_as_before():
    import re

    from guppyforge.cards import _STRINGS, deeper_than

    old = re.compile(rb'"(?:[^"\\]|\\.)*"')  # the alternation that took 9 s on a 30 MB card
    for raw in [
        b'{"a": "x\\"y[", "b": ["\\\\", "q]"]}',
        json.dumps({"k": ['a"b\\c{', "d"]}).encode(),
    ]:
        assert _STRINGS.sub(b"", raw) == old.sub(b"", raw)
    assert deeper_than(b"[" * 30 + b"]" * 30, 20) and not deeper_than(b'["[[[["]', 2)


@pytest.mark.parametrize("command", ["validate", "import-card", "preview"])
def test_a_fifo_as_input_is_refused_not_read(tmp_path, command):
    import os
    import subprocess
    import sys

    fifo = tmp_path / "p.yaml"
    os.mkfifo(fifo)
    code = "import sys; from guppyforge.apps.cli import main; sys.argv = ['guppyforge', *sys.argv[1:]]; main()"
    out = subprocess.run(
        [sys.executable, "-c", code, command, str(fifo)], capture_output=True, text=True, timeout=60
    )  # a read would block: the timeout would fail it
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {fifo}: a FIFO, device or socket")
