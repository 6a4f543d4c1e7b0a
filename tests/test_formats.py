"""Training on chat data of one's own: each shape recognised, converted and trained on."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from guppyforge.apps.cli import cli

ARGS = ["--preset", "micro", "--batch-size", "4", "--max-steps", "2", "--eval-every", "2", "-q"]
FOODS = ["worms", "flakes", "bugs", "shrimp", "peas"]
ASKS = ["are you hungry", "do you like {f}", "what do you eat", "where do you sleep"]


def pairs() -> list[tuple[str, str, str]]:
    """(question, answer, category) rows: 20 distinct prompts, two categories."""
    out = []
    for ask in ASKS:
        for food in FOODS:
            cat = "sleep" if "sleep" in ask else "food"
            out.append((ask.format(f=food), f"{food}? yes. always yes.", cat))
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


SHAPES = {
    "messages": lambda q, a, c: {
        "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    },
    "prompt-completion": lambda q, a, c: {"prompt": q, "completion": a},
    "alpaca": lambda q, a, c: {"instruction": q, "input": "", "output": a},
    "guppylm": lambda q, a, c: {"input": q, "output": a, "category": c},
}
LINES = {
    "messages": "messages: messages -> the conversation as it is; 20 rows",
    "prompt-completion": "prompt-completion: prompt -> user, completion -> assistant; 20 rows",
    "alpaca": "alpaca: instruction + input -> user, output -> assistant; 20 rows",
    "guppylm": "guppylm: input -> user, output -> assistant, category -> topic (2 topics); 20 rows",
}


def train(data: Path, out: Path, *extra: str):
    return CliRunner().invoke(cli, ["train", str(data), "--out", str(out), *ARGS, *extra])


@pytest.mark.parametrize("shape", list(SHAPES))
def test_each_shape_trains_a_micro_model(tmp_path, shape):
    data = write_jsonl(tmp_path / f"{shape}.jsonl", [SHAPES[shape](*p) for p in pairs()])
    result = train(data, tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert LINES[shape] in result.output
    assert "no test split in the data: 1 rows held out by prompt (seed 0), 19 for training" in (
        result.output
    )
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["dataset"]["format"] == shape
    assert (config["dataset"]["train_rows"], config["dataset"]["test_rows"]) == (19, 1)
    assert len(config["dataset"]["fingerprint"]) == 64
    assert f"| read as | {shape}: 20 rows, 0 bad rows left out |" in (
        (tmp_path / "run" / "README.md").read_text()
    )


def test_guppylm_categories_become_topics(tmp_path):
    from guppyforge.dataset.folder import load_splits

    data = write_jsonl(tmp_path / "guppy.jsonl", [SHAPES["guppylm"](*p) for p in pairs()])
    splits = load_splits(data, say=lambda line: None)
    topics = set(splits["train"]["topic"]) | set(splits["test"]["topic"])
    assert topics == {"food", "sleep"}
    assert splits["train"][0]["template_id"] == "guppy.jsonl#1"  # traced to file and row


def test_qa_csv_with_any_case_headers_and_a_test_file(tmp_path):
    folder = tmp_path / "sheet"
    folder.mkdir()
    for name, rows in (("train.csv", pairs()[:16]), ("test.csv", pairs()[16:])):
        with (folder / name).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["Question", "ANSWER"])
            w.writerows((q, a) for q, a, _ in rows)
    result = train(folder, tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "qa: Question -> user, ANSWER -> assistant; 20 rows" in result.output
    assert "test split from the files named for it: 4 rows" in result.output


def test_bad_rows_are_named_and_past_the_limit_train_refuses(tmp_path):
    rows = [SHAPES["messages"](*p) for p in pairs()]
    rows[2] = {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "x"}]}
    rows[5] = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}  # fmt: skip
    rows[7] = {"other": 1}
    rows[9] = SHAPES["messages"]("tell me everything", "word " * 400, "")
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    result = train(data, tmp_path / "run")
    assert result.exit_code != 0
    out = result.output
    assert f"bad row: {data}: row 3: message 2 is 'user' where 'assistant' belongs" in out
    assert f"bad row: {data}: row 6: empty reply in message 2" in out
    assert f"bad row: {data}: row 8: 'messages' is not a non-empty list" in out
    assert f"bad row: {data}: row 10: 2,018 characters: far too long for the 128-token" in out
    assert "4 of 20 rows are bad (20.0%; the limit is 1%)" in out
    assert not (tmp_path / "run" / "config.json").exists()


def test_ambiguous_columns_ask_for_format(tmp_path):
    rows = [SHAPES["messages"](q, a, c) | {"prompt": q, "completion": a} for q, a, c in pairs()]
    data = write_jsonl(tmp_path / "both.jsonl", rows)
    result = train(data, tmp_path / "run")
    assert result.exit_code != 0
    assert "its columns fit messages and prompt-completion. Say which with --format" in (
        result.output
    )
    result = train(data, tmp_path / "run2", "--format", "prompt-completion")
    assert result.exit_code == 0, result.output
    assert "prompt-completion: prompt -> user, completion -> assistant; 20 rows" in result.output


def test_eval_and_why_read_chat_data_with_format_and_notice_a_changed_file(tmp_path):
    from guppyforge.evaluate.trace import dataset_key, why

    rows = [SHAPES["guppylm"](*p) | {"prompt": p[0], "completion": p[1]} for p in pairs()]
    data = write_jsonl(tmp_path / "both.jsonl", rows)
    result = train(data, tmp_path / "run", "--format", "guppylm")
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    # The run's own data: the shape train was told is recorded and used again.
    trace = why(run, "worms? yes. always yes.", note=lambda _: None)
    assert trace.kind == "verbatim"
    assert (trace.sources[0].where, trace.sources[0].topic) == (f"{data}: row 1", "food")

    # Other data, ambiguous: --format says its shape, for eval and why alike.
    persona = tmp_path / "finn.yaml"
    persona.write_text("guppyforge: 1\nname: finn\nsummary: A fish.\ntopics:\n  food:\n"
                       "    ask: [are you hungry]\n    say: [worms. always.]\nprobes:\n"
                       "  - ask: are you hungry\n    expect_any: [worms]\n")  # fmt: skip
    quick = ["--samples", "1", "--topic-samples", "0", "--offtopic-samples", "0"]
    result = CliRunner().invoke(cli, ["eval", str(run), "--persona", str(persona),
                                      "--data", str(data), *quick])  # fmt: skip
    assert result.exit_code != 0 and "Say which with --format" in result.output
    result = CliRunner().invoke(cli, ["eval", str(run), "--persona", str(persona),
                                      "--data", str(data), "--format", "prompt-completion",
                                      *quick])  # fmt: skip
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["why", str(run), "peas? yes. always yes.", "--data",
                                      str(data), "--format", "prompt-completion"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"{data}: row" in result.output

    # One file of one's own: editing it changes the key the cached trace index is checked by.
    before = dataset_key(data)
    rows[0]["output"] = "worms? no. never again."
    write_jsonl(data, rows)
    assert dataset_key(data) != before
    trace = why(run, "worms? no. never again.", note=lambda _: None)
    assert trace.kind == "verbatim"  # re-indexed: the old cache would not know this reply


def test_a_system_message_is_shown_as_the_system_in_the_trainers_samples(tmp_path):
    system = {"role": "system", "content": "you are finn, a small fish"}
    rows = [{"messages": [system, *SHAPES["messages"](*p)["messages"]]} for p in pairs()]
    result = train(write_jsonl(tmp_path / "chat.jsonl", rows), tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "  system: you are finn, a small fish\n  you: " in result.output
    assert "you: you are finn" not in result.output
