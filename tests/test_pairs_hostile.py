"""import-pairs on sheets as people write them (issue 38): braces that look like templates, and
categories in any script, from the sheet to the rows `generate` writes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
from click.testing import CliRunner

from guppyforge.apps.cli import cli
from guppyforge.persona.schema import load_persona

PLAIN = [
    ("what do you eat", "worms. always worms.", "food"),
    ("do you eat flakes", "flakes? yes. flakes.", "food"),
    ("what is your best snack", "a bloodworm on a sunday.", "food"),
    ("where do you sleep", "behind the rock.", "home"),
    ("when do you sleep", "at night, by the plant.", "home"),
    ("is your tank nice", "round. with a castle.", "home"),
]
# Text a template engine would read as code: each must come out of generate as written.
BRACES = [
    ("what does {{ name }} mean", "it is how a template says a name.", "food"),
    ("say {% raw %}", "no {% endraw %} for you.", "home"),
    ("what is {# this #}", "a comment, in jinja.", "food"),
    ("close it: }}", "}} closed.", "home"),
]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def write_sheet(path: Path, rows) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["question", "answer", "category"])
        w.writerows(rows)
    return path


def rows_of(folder: Path) -> list[list[tuple[str, str]]]:
    return [
        [(m["role"], m["content"]) for m in row["messages"]]
        for f in sorted((folder / "data").glob("*.parquet"))
        for row in pq.read_table(f).to_pylist()
    ]


def test_template_syntax_in_a_pair_comes_out_of_generate_as_written(tmp_path):
    sheet = write_sheet(tmp_path / "qa.csv", PLAIN + BRACES)
    persona = tmp_path / "finn.yaml"
    result = invoke("import-pairs", sheet, "--out", persona, "--name", "finn")
    assert result.exit_code == 0, result.output
    assert invoke("validate", persona).exit_code == 0
    result = invoke("generate", persona, "-n", "40", "--out", tmp_path / "data", "-q")
    assert result.exit_code == 0, result.output
    assert "template syntax" not in result.output  # no generated row was dropped
    rows = rows_of(tmp_path / "data")
    for question, answer, _ in BRACES:
        assert [("user", question), ("assistant", answer)] in rows
    assert not any("{{ '{' }}" in text for row in rows for _, text in row)


def test_each_category_in_any_script_gets_its_own_topic(tmp_path):
    categories = ["食べ物", "日本語", "café", "Café", "C++", "C#", "🐟", "🦈", "Sleep & Rest"]
    rows = [(f"question {i} about it", f"answer {i}, so.", c) for i, c in enumerate(categories)]
    sheet = write_sheet(tmp_path / "qa.csv", rows)
    persona = tmp_path / "finn.yaml"
    result = invoke("import-pairs", sheet, "--out", persona, "--name", "finn")
    assert result.exit_code == 0, result.output
    p = load_persona(persona)
    # Case and spacing are one category; any other difference is a topic of its own.
    assert sorted(p.topics) == sorted(
        ["食べ物", "日本語", "café", "c", "c_2", "topic", "topic_2", "sleep_rest"]
    )
    assert p.topics["café"].weight == 2
    result = invoke("generate", persona, "-n", "30", "--out", tmp_path / "data", "-q")
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "data" / "stats.json").read_text(encoding="utf-8"))
    assert all(stats["topics"][t]["rows"] for t in p.topics)


def test_the_template_text_import_pairs_keeps_out_is_what_generate_refuses():
    from guppyforge.cards.pairs import TEMPLATE_TEXT
    from guppyforge.dataset.draw import TEMPLATE_TEXT as REFUSED

    assert TEMPLATE_TEXT.pattern == REFUSED.pattern
