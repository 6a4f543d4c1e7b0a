"""Data of one's own as real exports hold it (issue 38): read as written, or one line saying why.

Each case goes through the CLI (`train FILE`, `eval --data`, `why --data`, `generate`), on tiny
files made here; training runs two steps of the micro preset.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from guppyforge.apps.cli import cli

ARGS = ["--preset", "micro", "--batch-size", "4", "--max-steps", "2", "--eval-every", "2", "-q"]
FOODS = ["worms", "flakes", "bugs", "shrimp", "peas"]
ASKS = ["are you hungry", "do you like {f}", "what do you eat", "where do you sleep"]
# Cells pandas would have retyped: a number, "missing" in six spellings, two booleans, a zero.
TRICKY = ["1,001.50", "None", "NA", "null", "N/A", "nan", "#N/A", "True", "False", "007"]
PERSONA = """\
guppyforge: 1.3
name: finn
summary: A tiny fish for tests.
grammar:
  food: [worms, flakes, bugs, shrimp, peas]
topics:
  food:
    ask: ["do you like {{ food }}", "is {{ food }} good", "want some {{ food }}"]
    say: ["{{ food }}? yes. always yes.", "{{ food }}. i eat it near the rock."]
probes:
  - ask: are you hungry
    expect_any: [worms]
"""


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def train(data: Path, out: Path, *extra):
    return invoke("train", data, "--out", out, *ARGS, *extra)


def pairs() -> list[tuple[str, str]]:
    """20 (question, answer) rows with 20 distinct prompts."""
    return [(a.format(f=f), f"{f}? yes. always yes.") for a in ASKS for f in FOODS]


def write_csv(path: Path, rows, header=("question", "answer")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def one_error_line(result, start: str) -> None:
    # A ClickException exits; anything else would be the exception itself, a traceback.
    assert isinstance(result.exception, SystemExit) and result.exit_code != 0, result.exception
    lines = result.output.splitlines()  # a note (why's "indexing ...") may come first
    assert lines[-1].startswith(f"error: {start}"), result.output
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], result.output


def answers(data: Path) -> set[str]:
    from guppyforge.dataset.folder import load_splits

    splits = load_splits(data, say=lambda _: None)
    return {m[1]["content"] for split in splits.values() for m in split["messages"]}


# --- 5: a CSV's cells are text ---------------------------------------------------------------


def test_csv_cells_are_text_as_written_in_train_eval_why_and_examples(tmp_path):
    folder = tmp_path / "sheet"
    folder.mkdir()
    tricky = [(f"what do you say to {i}", v) for i, v in enumerate(TRICKY)]
    write_csv(folder / "train.csv", pairs()[:16] + tricky)
    write_csv(folder / "test.csv", pairs()[16:])
    result = train(folder, tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "bad row" not in result.output
    assert set(TRICKY) <= answers(folder)

    persona = tmp_path / "finn.yaml"
    persona.write_text(PERSONA.replace("guppyforge: 1.3\n", "guppyforge: 1\n"))
    quick = ["--samples", "1", "--topic-samples", "0", "--offtopic-samples", "0"]
    result = invoke("eval", tmp_path / "run", "--persona", persona, "--data", folder, *quick)
    assert result.exit_code == 0, result.output
    result = invoke("why", tmp_path / "run", "1,001.50", "--data", folder)
    assert result.exit_code == 0, result.output
    assert f"train.csv: row {16 + 1}" in result.output  # the cell, traced to its row

    # A persona's examples_file reads the same cells the same way.
    from guppyforge.persona.schema import load_persona

    hand = tmp_path / "hand"
    hand.mkdir()
    write_csv(hand / "hand.csv", tricky)
    (hand / "finn.yaml").write_text(PERSONA + "examples_file: hand.csv\n")
    made = {e.turns[0][1] for e in load_persona(hand / "finn.yaml").examples}
    assert made == set(TRICKY)


def test_json_keeps_its_own_types_and_a_number_is_no_message(tmp_path):
    rows = [{"q": q, "a": a} for q, a in pairs()[:18]]
    rows += [{"q": "how many fins", "a": 2}, {"q": "are you wet", "a": True}]
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    result = train(data, tmp_path / "run")
    assert f"bad row: {data}: row 20: 'a' is true, not text" in result.output
    assert result.exit_code != 0  # one bad row of 20 is past the 1% limit

    conv = [{"role": "user", "content": "how many fins"}, {"role": "assistant", "content": 2}]
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in pairs()] + [{"messages": conv}]  # fmt: skip
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    result = train(data, tmp_path / "run2")
    assert f"bad row: {data}: row 21: message 2: 'content' is 2, not text" in result.output


# --- 8, 15: files that are no data ------------------------------------------------------------


def test_invalid_utf8_is_one_line_in_train_eval_and_why(tmp_path, micro_run):
    run = tmp_path / "run"
    shutil.copytree(micro_run, run)
    good = "".join(json.dumps({"q": q, "a": a}) + "\n" for q, a in pairs()[:2]).encode()
    data = tmp_path / "latin1.jsonl"
    data.write_bytes(good + '{"q": "café", "a": "oui"}\n'.encode("latin-1"))
    place = f"{data}: line 3 (byte {len(good) + 10}): not UTF-8. Save it as UTF-8"
    one_error_line(train(data, tmp_path / "out"), place)
    one_error_line(invoke("eval", run, "--data", data, "--samples", "1"), place)
    one_error_line(invoke("why", run, "oui", "--data", data), place)


@pytest.mark.parametrize(
    ("name", "content", "line"),
    [
        ("empty.jsonl", b"", "empty file. Give a file with rows of chat data"),
        ("blank.json", b"\n  \n", "empty file."),
        ("list.json", b"[ ]\n", "no rows (an empty list, [])."),
        ("empty.csv", b"", "empty file."),
        ("header.csv", b"question,answer\r\n", "no rows (only a header)."),
        ("semi.csv", b"question;answer\nhi;yo\n",
         "one column `question;answer`: separated by ';'? guppyforge reads comma-separated CSV"),
        ("tabs.csv", b"question\tanswer\nhi\tyo\n", "one column `question\tanswer`: separated by"),
        ("utf16.csv", "question,answer\nhi,yo\n".encode("utf-16"), "not UTF-8 (UTF-16?). Save it"),
        ("utf16le.jsonl", '{"q": "hi", "a": "yo"}\n'.encode("utf-16-le"), "not UTF-8 (UTF-16?)."),
    ],
)  # fmt: skip
def test_an_empty_or_foreign_file_is_one_line_naming_it(tmp_path, name, content, line):
    data = tmp_path / name
    data.write_bytes(content)
    one_error_line(train(data, tmp_path / "run"), f"{data}: {line}")


def test_an_empty_file_in_a_folder_is_said_and_left_out(tmp_path):
    from guppyforge.dataset.folder import load_splits

    folder = tmp_path / "chats"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"q": q, "a": a} for q, a in pairs()])
    (folder / "b.csv").write_text("q,a\n")
    said = []
    load_splits(folder, say=said.append)
    assert f"{folder / 'b.csv'}: no rows (only a header): left out" in said


# --- 16: guppyforge's own files are never data ------------------------------------------------


def test_a_generate_folder_with_format_messages_is_the_dataset_it_is(tmp_path):
    persona = tmp_path / "finn.yaml"
    persona.write_text(PERSONA.replace("guppyforge: 1.3\n", "guppyforge: 1\n"))
    data = tmp_path / "data"
    result = invoke("generate", persona, "-n", "30", "--out", data, "-q")
    assert result.exit_code == 0, result.output
    result = train(data, tmp_path / "run", "--format", "messages")
    assert result.exit_code == 0, result.output
    assert "stats.json" not in result.output
    result = train(data, tmp_path / "run2", "--format", "qa")
    one_error_line(result, f"{data}: a dataset `guppyforge generate` wrote: its rows are messages")

    # A folder of one's own: what guppyforge wrote into it (stats, a run's config and metrics,
    # why's index) is never read as chat data.
    mine = tmp_path / "mine"
    shutil.copytree(data, mine / "generated", ignore=shutil.ignore_patterns("data", "*.md"))
    write_jsonl(mine / "chat.jsonl", [{"q": q, "a": a} for q, a in pairs()])
    for name in ("config.json", "metrics.jsonl", "trace/meta.json"):
        (mine / name).parent.mkdir(exist_ok=True)
        (mine / name).write_text('{"step": 1, "loss": 2.5}\n')
    result = train(mine, tmp_path / "run3")
    assert result.exit_code == 0, result.output
    assert "qa: q -> user, a -> assistant; 20 rows" in result.output


# --- 19: NUL bytes, a file alone, why's index --------------------------------------------------


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_a_nul_byte_in_a_cell_is_refused_with_its_row(tmp_path, suffix):
    rows = pairs()
    rows[1] = ("do you like worms", "worms\0? yes")
    if suffix == "csv":
        data = write_csv(tmp_path / "nul.csv", rows)
    else:
        data = write_jsonl(tmp_path / "nul.jsonl", [{"q": q, "a": a} for q, a in rows])
    one_error_line(train(data, tmp_path / "run"), f"{data}: row 2: holds a NUL byte.")


def test_a_file_given_alone_is_never_all_test(tmp_path):
    data = write_jsonl(tmp_path / "chat_dev_2024.jsonl", [{"q": q, "a": a} for q, a in pairs()])
    result = train(data, tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "no test split in the data: 1 rows held out by prompt (seed 0), 19 for training" in (
        result.output
    )


def test_why_sees_an_edit_that_keeps_size_and_time(tmp_path):
    from guppyforge.evaluate.trace import dataset_key, why

    rows = [{"input": q, "output": a, "category": "food"} for q, a in pairs()]
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    result = train(data, tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert why(tmp_path / "run", "worms? yes. always yes.", note=lambda _: None).kind == "verbatim"

    before, stat = dataset_key(data), data.stat()
    rows[0]["output"] = "slugs? yes. always yes."  # as long as the reply it replaces
    write_jsonl(data, rows)
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (data.stat().st_size, data.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    assert dataset_key(data) != before
    assert why(tmp_path / "run", "slugs? yes. always yes.", note=lambda _: None).kind == "verbatim"


# --- 9: generate with as many examples as -n -------------------------------------------------


def test_examples_that_fill_n_are_one_warning_not_a_crash(tmp_path):
    hand = [{"question": f"question number {i}", "answer": f"answer {i}", "topic": "food"}
            for i in range(6)]  # fmt: skip
    write_jsonl(tmp_path / "hand.jsonl", hand)
    persona = tmp_path / "finn.yaml"
    persona.write_text(PERSONA + "examples_file: hand.jsonl\n")
    line = (
        f"warning: {persona}: its hand-written examples fill all 4 rows asked for (-n 4), so no "
        "row was generated from its topics"
    )
    result = invoke("generate", persona, "-n", "4", "--out", tmp_path / "a", "-q")
    assert result.exit_code == 0, result.output
    assert line in result.output
    assert json.loads((tmp_path / "a" / "stats.json").read_text())["rows"] == 4
    result = invoke("generate", persona, "-n", "4", "--out", tmp_path / "b", "--strict", "-q")
    one_error_line(result, f"{persona}: its hand-written examples fill all 4 rows")

    # A few rows past the examples: the examples in a topic are not its weight's overshoot.
    result = invoke("generate", persona, "-n", "8", "--out", tmp_path / "c", "-q")
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
