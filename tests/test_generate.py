"""`guppyforge generate`: a persona file becomes a dataset folder that `load_dataset` reads.

One small dataset is generated once per module (`fish_data`) and inspected by several tests;
tests that need a run of their own keep n small so the whole file stays fast on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import guppyforge.dataset.generate as generate_module
from guppyforge.apps.cli import cli
from guppyforge.dataset.draw import parse_turns
from guppyforge.dataset.folder import fingerprint
from guppyforge.dataset.generate import CapacityWarning, generate_dataset
from guppyforge.dataset.split import prompt_key, split_by_prompt
from guppyforge.errors import GuppyError

# A persona small enough to read at a glance, big enough for a few thousand distinct rows.
FISH_YAML = """\
guppyforge: 1
name: testfish
display_name: Testy
summary: "A test fish: small, wet, and fond of worms."
license: mit
language: en
tags: [test, "fish: yes"]
grammar:
  food: [worms, flakes, bugs, peas, algae, shrimp, crumbs, larvae, moths, seeds]
  spot: [the castle, the rock, the plant, the glass, the gravel, the filter, the bubbles]
  mood: [happy, sleepy, hungry, curious, calm, wiggly]
topics:
  food:
    weight: 2
    ask:
      - do you like {{ food }}
      - want some {{ food }}?
      - is {{ food }} good
      - "{{ food | capitalize }} for dinner?"
    say:
      - "{{ food }}? yes. i eat it near {{ spot }}."
      - i ate {{ food }} by {{ spot }}. now i feel {{ mood }}.
      - "{{ food }} makes me {{ mood }}."
    follow_ups:
      - ask: ["and after the {{ food }}?"]
        say: ["after the {{ food }} i nap by {{ spot }}."]
      - ask: ["do you dream when you nap?"]
        say: ["i dream of more {{ food }}."]
  home:
    ask: [where do you live, where do you sleep, "what is near {{ spot }}"]
    say: ["i live by {{ spot }}. i am {{ mood }} there.", "{{ spot }}. it is {{ mood }}."]
examples:
  - topic: food
    turns:
      - user: what is your favourite thing
        assistant: worms. always worms.
probes:
  - ask: are you hungry
    expect_any: [food, worms]
"""

# A persona that can only ever say two things: it runs out of distinct conversations.
TINY_YAML = """\
guppyforge: 1.2
variation: off  # typing "hi" as "Hi!" or "hey hi lol" would make it many more
name: tiny
display_name: Tiny
summary: A fish with very little to say.
license: mit
topics:
  hello:
    ask: [hi]
    say: [blub, blub blub]
"""


@pytest.fixture(scope="module")
def fish_persona(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("persona") / "testfish.yaml"
    path.write_text(FISH_YAML, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_persona(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("persona") / "tiny.yaml"
    path.write_text(TINY_YAML, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def fish_data(fish_persona, tmp_path_factory):
    """One 1,000-row dataset shared by the read-only tests below."""
    out = tmp_path_factory.mktemp("data") / "fish"
    result = generate_dataset(fish_persona, out, n=1000, seed=3, test_size=0.1, progress=False)
    return out, result


def read_rows(out: Path, split: str) -> list[dict]:
    """A split's rows, read with pyarrow (cheaper than `datasets` where that is not the point)."""
    return pq.read_table(out / "data" / f"{split}-00000-of-00001.parquet").to_pylist()


def run_cli(*args: str):
    return CliRunner().invoke(cli, ["generate", *args])


# --- the folder --------------------------------------------------------------------------------


def test_load_dataset_reads_both_splits_with_no_other_argument(fish_data, tmp_path):
    from datasets import load_dataset

    out, result = fish_data
    ds = load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert set(ds) == {"train", "test"}
    assert len(ds["train"]) + len(ds["test"]) == result.rows == 1000
    assert len(ds["test"]) == result.test > 0
    assert ds["train"].column_names == ["messages", "topic", "template_id", "turns"]
    first = ds["train"][0]["messages"]
    assert [m["role"] for m in first] == ["user", "assistant"]


def test_rows_are_unique_and_include_the_hand_written_example(fish_data):
    out, result = fish_data
    rows = read_rows(out, "train") + read_rows(out, "test")
    conversations = {tuple((m["role"], m["content"]) for m in r["messages"]) for r in rows}
    assert len(conversations) == len(rows) == 1000
    assert (
        ("user", "what is your favourite thing"),
        ("assistant", "worms. always worms."),
    ) in conversations
    assert result.examples == 1
    assert 0 < result.unique_pct <= 100
    assert result.drawn >= result.rows - result.examples


def test_no_test_prompt_appears_in_train(fish_data):
    out, _ = fish_data
    train = {
        prompt_key([(m["role"], m["content"]) for m in r["messages"]])
        for r in read_rows(out, "train")
    }
    test = {
        prompt_key([(m["role"], m["content"]) for m in r["messages"]])
        for r in read_rows(out, "test")
    }
    assert test and not test & train


def test_folder_holds_card_stats_and_an_exact_persona_copy(fish_data, fish_persona):
    out, result = fish_data
    assert (out / "persona.yaml").read_bytes() == fish_persona.read_bytes()
    stats = json.loads((out / "stats.json").read_text())
    assert stats["rows"] == 1000
    assert stats["splits"] == {"train": result.train, "test": result.test}
    assert sum(t["rows"] for t in stats["topics"].values()) == 1000
    assert set(stats["topics"]) == {"food", "home"}
    assert 0 < stats["diversity"]["distinct_2"] <= 1
    card = (out / "README.md").read_text()
    assert "A test fish: small, wet, and fond of worms." in card
    assert "guppyforge generate" in card and "--seed 3" in card
    assert result.fingerprint in card
    assert not list(out.parent.glob("*.tmp-*"))  # the temporary folder is gone


def test_fingerprint_can_be_recomputed_from_the_loaded_rows(fish_data):
    out, result = fish_data

    def as_row(r):
        return (
            [[m["role"], m["content"]] for m in r["messages"]],
            r["topic"],
            r["template_id"],
            r["turns"],
        )

    splits = {name: [as_row(r) for r in read_rows(out, name)] for name in ("train", "test")}
    assert fingerprint(splits) == result.fingerprint


def test_card_parses_with_huggingface_hub_without_warnings(fish_data):
    from huggingface_hub import DatasetCard

    out, result = fish_data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        card = DatasetCard.load(out / "README.md")
    assert [str(w.message) for w in caught] == []
    data = card.data.to_dict()
    assert data["license"] == "mit"
    assert data["language"] == ["en"]
    assert data["task_categories"] == ["text-generation"]
    assert data["size_categories"] == ["1K<n<10K"]
    assert "fish: yes" in data["tags"]  # a colon in a tag does not break the YAML
    splits = {s["name"]: s["num_examples"] for s in data["dataset_info"]["splits"]}
    assert splits == {"train": result.train, "test": result.test}


# --- determinism -------------------------------------------------------------------------------


def test_two_workers_write_the_same_bytes_as_one(fish_persona, fish_data, tmp_path):
    one, _ = fish_data
    two = tmp_path / "two"
    generate_dataset(fish_persona, two, n=1000, seed=3, test_size=0.1, workers=2, progress=False)
    for name in ("data/train-00000-of-00001.parquet", "data/test-00000-of-00001.parquet"):
        assert (one / name).read_bytes() == (two / name).read_bytes()
    assert (one / "stats.json").read_bytes() == (two / "stats.json").read_bytes()


def test_same_seed_gives_the_same_data_in_a_fresh_process(fish_persona, tmp_path):
    # Python salts str hashes per process, so iterating a set of names can change order from
    # one run to the next. Two processes with different salts must still agree.
    script = (
        "import sys; from guppyforge.dataset.generate import generate_dataset; "
        "r = generate_dataset(sys.argv[1], sys.argv[2], n=300, seed=3, progress=False); "
        "print(r.fingerprint)"
    )
    prints = []
    for salt in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": salt}
        args = [sys.executable, "-c", script, str(fish_persona), str(tmp_path / salt)]
        done = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
        prints.append(done.stdout.strip())
    assert prints[0] == prints[1]


def test_another_seed_gives_other_data(fish_persona, fish_data, tmp_path):
    _, first = fish_data
    other = generate_dataset(fish_persona, tmp_path / "s4", n=1000, seed=4, progress=False)
    assert other.fingerprint != first.fingerprint


# --- turns -------------------------------------------------------------------------------------


def test_parse_turns():
    assert parse_turns("1") == (1, 1)
    assert parse_turns(3) == (3, 3)
    assert parse_turns("1-3") == (1, 3)
    for bad in ("0", "3-1", "two", "1-", "1-99"):
        with pytest.raises(GuppyError):
            parse_turns(bad)


def test_two_turns_reuse_the_first_turns_values(fish_persona, tmp_path):
    out = tmp_path / "two-turns"
    generate_dataset(fish_persona, out, n=300, seed=1, turns="2", progress=False)
    rows = [r for r in read_rows(out, "train") if r["topic"] == "food" and r["turns"] == 2]
    assert rows
    foods = "worms flakes bugs peas algae shrimp crumbs larvae moths seeds".split()
    for row in rows:
        messages = row["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * 2
        # The replies, which variation never touches, name the first question's food in both
        # turns: values are picked once per conversation.
        asked = [f for f in foods if f in messages[1]["content"]]
        assert asked and asked[0] in messages[3]["content"]


def test_a_turn_range_mixes_lengths(fish_persona, tmp_path):
    out = tmp_path / "range"
    generate_dataset(fish_persona, out, n=300, seed=1, turns="1-3", test_size=0, progress=False)
    turns = {r["turns"] for r in read_rows(out, "train") if r["topic"] == "food"}
    assert turns == {1, 2, 3}


# --- capacity ----------------------------------------------------------------------------------


def test_a_spent_persona_warns_with_the_count_reached(tiny_persona, tmp_path):
    with pytest.warns(CapacityWarning, match="only 2 distinct conversations"):
        result = generate_dataset(tiny_persona, tmp_path / "t", n=50, test_size=0, progress=False)
    assert result.capacity_spent and result.rows == 2


def test_strict_turns_a_spent_persona_into_a_one_line_error(tiny_persona, tmp_path):
    out = tmp_path / "t"
    result = run_cli(str(tiny_persona), "-n", "50", "--strict", "--out", str(out), "-q")
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert "only 2 distinct" in result.output
    assert not out.exists()


# --- the split ---------------------------------------------------------------------------------


def test_split_keeps_groups_whole_and_follows_the_seed():
    keys = [f"prompt {i % 50}" for i in range(1000)]  # 50 groups of 20 rows
    train, test = split_by_prompt(keys, 0.1, seed=1)
    assert len(test) == 100 and len(train) == 900
    assert not {keys[i] for i in test} & {keys[i] for i in train}
    assert split_by_prompt(keys, 0.1, seed=1) == (train, test)
    assert split_by_prompt(keys, 0.1, seed=2) != (train, test)


def test_split_of_a_single_prompt_is_refused():
    with pytest.raises(GuppyError, match="share one prompt"):
        split_by_prompt(["hi"] * 10, 0.2, seed=0)


# --- the output folder -------------------------------------------------------------------------


def test_an_existing_folder_is_refused_without_force(fish_persona, tmp_path):
    out = tmp_path / "d"
    assert run_cli(str(fish_persona), "-n", "300", "--out", str(out), "-q").exit_code == 0
    before = (out / "stats.json").read_bytes()
    again = run_cli(str(fish_persona), "-n", "300", "--seed", "9", "--out", str(out), "-q")
    assert again.exit_code == 1
    assert again.output == (
        f"error: {out}: already holds a guppyforge dataset. Add --force to replace the files it "
        "wrote (and no other), or choose a new --out\n"
    )
    assert (out / "stats.json").read_bytes() == before

    forced = run_cli(
        str(fish_persona), "-n", "300", "--seed", "9", "--out", str(out), "-q", "--force"
    )
    assert forced.exit_code == 0, forced.output
    assert f"\nwrote {out}: 300 rows" in "\n" + forced.output
    assert json.loads((out / "stats.json").read_text())["seed"] == 9


def test_force_never_deletes_a_folder_that_is_not_a_dataset(fish_persona, tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    result = run_cli(str(fish_persona), "-n", "300", "--out", str(tmp_path), "--force", "-q")
    assert result.exit_code == 1 and "has no .guppyforge.json" in result.output
    assert (tmp_path / "notes.txt").read_text() == "precious"


def test_an_interrupted_run_leaves_no_complete_looking_folder(fish_persona, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # as if Ctrl-C hit while the card was being written

    monkeypatch.setattr(generate_module, "render_card", crash)
    out = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(fish_persona, out, n=300, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither `crashed` nor `crashed.tmp-<pid>`


def test_an_interrupted_forced_run_keeps_the_old_dataset(fish_persona, tmp_path, monkeypatch):
    out = tmp_path / "d"
    generate_dataset(fish_persona, out, n=300, progress=False)
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(generate_module, "write_parquet", crash)
    with pytest.raises(OSError):
        generate_dataset(fish_persona, out, n=300, seed=5, force=True, progress=False)
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        (["-n", "0"], "-n 0: the number of conversations must be at least 1"),
        (["--turns", "zero"], "--turns zero:"),
        (["--test-size", "1.5"], "--test-size 1.5: must be at least 0 and below 1"),
        (["--workers", "0"], "--workers 0: must be at least 1"),
    ],
)
def test_bad_options_are_one_line_errors(fish_persona, tmp_path, args, expected):
    result = run_cli(str(fish_persona), *args, "--out", str(tmp_path / "x"))
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {expected}") and result.output.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_a_missing_or_broken_persona_is_a_one_line_error(tmp_path):
    missing = run_cli(str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "x"))
    assert missing.exit_code == 1 and missing.output.count("\n") == 1
    assert missing.output.startswith(f"error: {tmp_path / 'nope.yaml'}: no such persona file")

    broken = tmp_path / "broken.yaml"
    broken.write_text("guppyforge: 1\nname: broken\ntopics: {}\n")
    result = run_cli(str(broken), "--out", str(tmp_path / "x"))
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert result.output.startswith(f"error: {broken}")


def test_card_reproduce_command_names_the_folders_own_persona_copy(
    fish_data, monkeypatch, tmp_path
):
    out, result = fish_data
    card = (out / "README.md").read_text()
    block = card.split("## Reproduce", 1)[1].split("```sh\n", 1)[1].split("\n```", 1)[0]
    assert block.startswith("guppyforge generate persona.yaml ")
    assert str(out) not in card and str(out.parent) not in block  # no path of the author's
    # Run as written, in (a copy of) the folder: the very same rows.
    shutil.copytree(out, tmp_path / "fish")
    monkeypatch.chdir(tmp_path / "fish")
    again = run_cli(*block.split()[2:], "--quiet")
    assert again.exit_code == 0, again.output
    assert json.loads(Path("rebuilt/stats.json").read_text())["fingerprint"] == (result.fingerprint)


DRY = Path(__file__).parent / "fixtures" / "personas" / "quill_dry.yaml"


def test_data_unlike_the_file_is_warned_in_output_stats_and_card(tmp_path):
    with pytest.warns(generate_module.DataWarning) as caught:
        result = generate_dataset(DRY, tmp_path / "q", n=3000, seed=1, progress=False)
    messages = [str(w.message) for w in caught if w.category is generate_module.DataWarning]
    assert any(f"{DRY}: only " in m and "draws were new (under 90%)" in m for m in messages)
    assert any("topics.help: 4 rows where its weight asked for about" in m for m in messages)
    # A topic whose few rows all share their opening with train rows can get no test row.
    assert any(": no rows in the test split, so eval never sees it" in m for m in messages)
    stats = result.stats
    assert stats["warnings"] and all(w.startswith("persona.yaml: ") for w in stats["warnings"])
    assert len(stats["warnings"]) == len(messages)
    card = (tmp_path / "q" / "README.md").read_text()
    assert "**Warnings:**" in card and stats["warnings"][0] in card
    assert str(DRY) not in card


def test_strict_makes_a_data_warning_an_error_and_writes_nothing(tmp_path):
    result = run_cli(str(DRY), "-n", "3000", "--strict", "--out", str(tmp_path / "q"), "-q")
    assert result.exit_code == 1 and "draws were new (under 90%)" in result.output
    assert not (tmp_path / "q").exists()


def test_a_healthy_persona_gets_no_data_warning(tmp_path):
    # 5,000 rows: the cat's weight-1 topics ask for about 28 each, which chance moves by a few.
    for seed in (1, 2):
        result = generate_dataset("cat", tmp_path / f"c{seed}", n=5000, seed=seed, progress=False)
        assert result.stats["warnings"] == []
