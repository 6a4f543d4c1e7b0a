"""A persona's examples_file (format 1.3) and import-pairs: hand-written pairs into a character."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from guppyforge.apps.cli import cli
from guppyforge.errors import GuppyError
from guppyforge.persona.schema import load_persona

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
  home:
    ask: ["where do you live", "what is your tank like", "is your tank nice"]
    say: ["in the glass. it is round.", "a plant, a castle and me."]
examples_file: EXAMPLES
"""
HAND = [
    {"question": "what is your name", "answer": "finn. just finn. the one by the castle.",
     "category": "home"},
    {"question": "who feeds you", "answer": "the big hand from above. it brings flakes.",
     "category": ""},
    {"question": "do you have friends", "answer": "a snail. he is slow but kind.", "category": "home"},
    {"question": "what scares you", "answer": "the net. and the cat. mostly the cat.",
     "category": "home"},
    {"question": "best food ever", "answer": "a bloodworm on a sunday.", "category": "food"},
    {"question": "worst food ever", "answer": "the old flakes under the rock.", "category": "food"},
]  # fmt: skip


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def write(folder: Path, examples: str = "hand.jsonl", rows=HAND, version: str = "1.3") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = PERSONA.replace("EXAMPLES", examples).replace(
        "guppyforge: 1.3", f"guppyforge: {version}"
    )
    (folder / "finn.yaml").write_text(text, encoding="utf-8")
    if rows is not None and examples.endswith(".jsonl"):
        (folder / examples).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "finn.yaml"


def test_examples_file_round_trip_validate_preview_generate_train_why(tmp_path):
    persona = write(tmp_path / "p")
    p = load_persona(persona)
    assert [(e.file, e.row, e.topic) for e in p.examples][:2] == [
        ("hand.jsonl", 1, "home"),
        ("hand.jsonl", 2, None),
    ]
    assert invoke("validate", persona).exit_code == 0

    out = invoke("preview", persona, "--examples").output
    assert "# 6 hand-written examples, all in the data" in out
    assert "# examples/0@hand.jsonl#1\nuser: what is your name\nfinn: finn. just finn." in out

    data = tmp_path / "data"
    result = invoke("generate", persona, "--out", data, "-n", "80")
    assert result.exit_code == 0, result.output
    assert (data / "hand.jsonl").read_bytes() == (tmp_path / "p" / "hand.jsonl").read_bytes()
    import pyarrow.parquet as pq

    rows = [r for f in sorted(data.glob("data/*.parquet")) for r in pq.read_table(f).to_pylist()]
    ids = {r["template_id"]: r["topic"] for r in rows if r["template_id"].startswith("examples")}
    assert ids["examples/0@hand.jsonl#1"] == "home" and ids["examples/1@hand.jsonl#2"] == "examples"
    assert len(ids) == len(HAND)

    run = tmp_path / "run"
    args = ["--preset", "micro", "--batch-size", "4", "--max-steps", "2", "-q"]
    result = invoke("train", data, "--out", run, *args)
    assert result.exit_code == 0, result.output
    assert (run / "hand.jsonl").is_file()  # the run's persona copy loads on its own
    load_persona(run / "persona.yaml")
    marker = json.loads((run / ".guppyforge.json").read_text())
    assert "hand.jsonl" in marker["files"]  # ours: a later --force replaces it

    # Trace a hand-written reply that the split put in train: its file and row are named.
    train_rows = pq.read_table(data / "data" / "train-00000-of-00001.parquet").to_pylist()
    row = next(int(r["template_id"].rpartition("#")[2]) for r in train_rows
               if r["template_id"].startswith("examples/"))  # fmt: skip
    reply = HAND[row - 1]["answer"]
    result = invoke("why", run, reply)
    assert result.exit_code == 0, result.output
    assert f"{run / 'hand.jsonl'}: row {row}" in result.output
    from guppyforge.evaluate.trace import why

    source = why(run, reply, note=lambda _: None).to_dict()["sources"][0]
    topic = HAND[row - 1]["category"] or "examples"
    assert (source["where"], source["topic"], source["row"]) == (
        f"{run / 'hand.jsonl'}: row {row}", topic, row)  # fmt: skip


def test_examples_file_rows_are_checked_and_named(tmp_path):
    rows = [HAND[0], {"question": "hello", "answer": " "}, {"question": "hi", "answer": "x",
            "category": "snacks"}]  # fmt: skip
    persona = write(tmp_path, rows=rows)
    out = invoke("validate", persona).output
    assert "examples_file: hand.jsonl: row 2: empty reply ('answer')" in out
    assert "examples_file: hand.jsonl: row 3: unknown topic 'snacks'" in out


# Names of a run's or a dataset's own files, written the ways a path can be: none may be taken.
TAKEN = ["./metrics.jsonl", "./config.json", "./stats.json", "./.guppyforge.json", "stats.json/",
         "./tokenizer_config.json", "special_tokens_map.json", "Config.JSON",
         "checkpoints/rows.jsonl", "./data/rows.csv", "trace/meta.json"]  # fmt: skip


@pytest.mark.parametrize(
    ("written", "problem"),
    [
        ("../outside.jsonl", "'../outside.jsonl' leads outside the persona's folder"),
        ("/etc/passwd.csv", "leads outside the persona's folder"),
        ("stats.json", "is a name guppyforge writes beside a persona's copy"),
        *[(name, "is a name guppyforge writes beside a persona's copy") for name in TAKEN],
        ("hand.txt", "is not a .jsonl, .json or .csv file"),
        ("missing.csv", "no such file beside finn.yaml"),
    ],
)
def test_examples_file_paths_a_stranger_could_abuse_are_refused(tmp_path, written, problem):
    persona = write(tmp_path / "p", examples=written, rows=None)
    (tmp_path / "outside.jsonl").write_text(json.dumps(HAND[0]) + "\n")
    with pytest.raises(GuppyError, match=problem):
        load_persona(persona)


def test_examples_file_link_out_fifo_size_and_version_are_refused(tmp_path, monkeypatch):
    (tmp_path / "secret.jsonl").write_text(json.dumps(HAND[0]) + "\n")
    persona = write(tmp_path / "p", examples="link.jsonl", rows=None)
    (tmp_path / "p" / "link.jsonl").symlink_to(tmp_path / "secret.jsonl")
    with pytest.raises(GuppyError, match="a link that leads outside the persona's folder"):
        load_persona(persona)

    persona = write(tmp_path / "q", examples="pipe.jsonl", rows=None)
    os.mkfifo(tmp_path / "q" / "pipe.jsonl")
    with pytest.raises(GuppyError, match="not a regular file"):
        load_persona(persona)  # refused at once: nothing blocks waiting for a writer

    persona = write(tmp_path / "r")
    monkeypatch.setattr("guppyforge.persona.bounds.MAX_EXAMPLES_FILE_BYTES", 50)
    with pytest.raises(GuppyError, match="bytes, more than the 50 limit"):
        load_persona(persona)
    monkeypatch.undo()

    persona = write(tmp_path / "s", version="1.2")
    with pytest.raises(GuppyError, match="`examples_file` needs persona format 1.3"):
        load_persona(persona)


def test_examples_file_takes_a_format_for_ambiguous_columns(tmp_path):
    rows = [{"prompt": "hi", "completion": "hello. i am finn.",
             "messages": [{"role": "user", "content": "x"}]}]  # fmt: skip
    persona = write(tmp_path, rows=rows)
    with pytest.raises(GuppyError, match="fit messages and prompt-completion. Say which with "
                       "format: messages"):  # fmt: skip
        load_persona(persona)
    text = persona.read_text().replace(
        "examples_file: hand.jsonl", "examples_file: {path: hand.jsonl, format: prompt-completion}"
    )
    persona.write_text(text)
    assert load_persona(persona).examples[0].turns == (("hi", "hello. i am finn."),)


# --- import-pairs ------------------------------------------------------------------------------

SHEET = [
    ("what do you eat", "worms. always worms.", "Food"),
    ("do you eat flakes", "flakes? yes. flakes.", "Food"),
    ("where do you sleep", "behind the rock.", "Sleep & Rest"),
    ("when do you sleep", "at night, by the plant.", "Sleep & Rest"),
    ("what is your {name}", "finn.", ""),
]


def write_sheet(path: Path, header: list[str], rows) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_import_pairs_with_a_category_column_makes_a_topic_per_category(tmp_path):
    sheet = write_sheet(tmp_path / "qa.csv", ["Question", "Answer", "Category"], SHEET)
    out = tmp_path / "finn.yaml"
    result = invoke("import-pairs", sheet, "--out", out, "--name", "finn")
    assert result.exit_code == 0, result.output
    assert "qa: Question -> user, Answer -> assistant, Category -> topic (2 topics); 5 rows" in (
        result.output
    )
    p = load_persona(out)
    assert sorted(p.topics) == ["food", "sleep_rest"]
    assert p.topics["food"].weight == 2
    assert [t.text for t in p.topics["sleep_rest"].ask] == ["where do you sleep", "when do you sleep"]  # fmt: skip
    assert [(e.topic, e.turns) for e in p.examples][4] == (None, (SHEET[4][:2],))
    assert invoke("validate", out).exit_code == 0
    # A brace typed in a cell is text: kept as written in the examples, never a topic's template.
    assert "texts that hold template syntax ({{, }}, {%, {#, {name}): 1, kept" in result.output
    assert all("{" not in a.text for t in p.topics.values() for a in (*t.ask, *t.say))

    result = invoke("import-pairs", sheet, "--out", out, "--name", "finn")
    assert result.exit_code != 0 and "already exists. Pass --force" in result.output
    (tmp_path / "notes.yaml").write_text("my notes\n")
    result = invoke("import-pairs", sheet, "--out", tmp_path / "notes.yaml", "--force")
    assert result.exit_code != 0 and "never replaces it" in result.output
    assert (tmp_path / "notes.yaml").read_text() == "my notes\n"


def test_import_pairs_without_categories_clusters_by_shared_words(tmp_path):
    rows = [(q.replace("flakes", "worms"), a) for q, a, _ in SHEET]
    sheet = write_sheet(tmp_path / "sheet.csv", ["q", "a"], rows)
    out = tmp_path / "sheet.yaml"
    result = invoke("import-pairs", sheet, "--out", out)
    assert result.exit_code == 0, result.output
    p = load_persona(out)
    assert p.name == "sheet"
    # "eat" is in two questions, "sleep" in two; the name question holds a brace: an example only.
    assert {t: len(topic.ask) for t, topic in p.topics.items()} == {"eat": 2, "sleep": 2}
    assert len(p.examples) == 5
    assert invoke("validate", out).exit_code == 0


@pytest.mark.parametrize("png", [False, True])
def test_a_card_of_a_persona_with_an_examples_file_comes_back_byte_for_byte(tmp_path, png):
    from PIL import Image

    persona = write(tmp_path / "a")
    card = tmp_path / ("finn.png" if png else "finn.json")
    picture = ["--png", tmp_path / "face.png"] if png else []
    if png:
        Image.new("RGB", (4, 4), "orange").save(tmp_path / "face.png")
    assert invoke("export-card", persona, "--out", card, *picture).exit_code == 0
    out = tmp_path / "b" / "finn.yaml"
    result = invoke("import-card", card, "--out", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == persona.read_bytes()
    assert (out.parent / "hand.jsonl").read_bytes() == (persona.parent / "hand.jsonl").read_bytes()
    assert load_persona(out).examples  # it loads, rows and all

    # A different file of the user's under that name is never replaced, and nothing is written.
    mine = tmp_path / "c" / "hand.jsonl"
    mine.parent.mkdir()
    mine.write_text('{"question": "mine", "answer": "mine"}\n')
    line = invoke("import-card", card, "--out", mine.parent / "finn.yaml").output
    assert line.startswith("error: ") and "never replaces it" in line, line
    assert mine.read_text() == '{"question": "mine", "answer": "mine"}\n'
    assert not (mine.parent / "finn.yaml").exists()
