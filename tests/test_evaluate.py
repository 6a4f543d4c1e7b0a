"""`guppyforge eval`: perplexity, probe pass rate, memorised rate and distinct-2 of a run."""

from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from guppyforge.apps.cli import cli
from guppyforge.apps.evaluate import check_reply, count_sentences, distinct_2, has_phrase, words

KEYS = {"probe_pass_rate", "perplexity", "memorized_rate", "distinct_2", "probes", "test_loss"}


def invoke(*args):
    return CliRunner().invoke(cli, ["eval", *map(str, args)])


@pytest.fixture(scope="module")
def figures(micro_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "eval.json"
    result = invoke(micro_run, "--json", out, "--samples", "3", "--seed", "1")
    assert result.exit_code == 0, result.output
    return result.output, json.loads(out.read_text())


# --- the command -------------------------------------------------------------------------------


def test_json_has_the_figures_in_sane_ranges(figures):
    _, got = figures
    assert KEYS <= set(got)
    for key in ("probe_pass_rate", "memorized_rate", "distinct_2"):
        assert 0.0 <= got[key] <= 1.0, key
    assert 1.0 <= got["perplexity"] < 383  # better than guessing among the whole vocabulary
    assert math.isclose(got["perplexity"], math.exp(got["test_loss"]), rel_tol=1e-6)
    assert [p["ask"] for p in got["probes"]] == ["are you hungry", "what is the meaning of life"]
    for p in got["probes"]:
        assert p["samples"] == 3 and 0 <= p["passed"] <= 3 and p["example"]
    passed = sum(p["passed"] for p in got["probes"])
    assert got["probe_pass_rate"] == pytest.approx(passed / 6)
    # The trained micro model answers "are you hungry" in character at least once.
    assert got["probes"][0]["passed"] > 0


def test_table_shows_each_probe_and_the_figures(figures):
    output, got = figures
    for p in got["probes"]:
        assert p["ask"] in output and f"{p['passed']}/{p['samples']}" in output
    for label in ("probe pass rate", "perplexity", "memorised", "distinct-2"):
        assert label in output


def test_same_seed_same_figures(micro_run, figures, tmp_path):
    out = tmp_path / "again.json"
    assert invoke(micro_run, "--json", out, "--samples", "3", "--seed", "1").exit_code == 0
    assert json.loads(out.read_text())["probes"] == figures[1]["probes"]


def test_min_pass_fails_with_exit_code_1_and_one_line(micro_run):
    result = invoke(micro_run, "--samples", "1", "--min-pass", "1.0", "--temperature", "0")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("FAIL: probe pass rate")
    assert invoke(micro_run, "--samples", "1", "--min-pass", "0").exit_code == 0


def test_missing_run_folder_is_one_line(tmp_path):
    result = invoke(tmp_path / "nope")
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert result.output.startswith("error: ") and "nope" in result.output


def test_missing_dataset_suggests_data(micro_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(micro_run, run)
    config = json.loads((run / "config.json").read_text())
    config["dataset"]["path"] = str(tmp_path / "moved-away")
    (run / "config.json").write_text(json.dumps(config))
    result = invoke(run)
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "moved-away" in result.output and "--data" in result.output


def test_missing_persona_suggests_persona(micro_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(micro_run, run)
    (run / "persona.yaml").unlink()
    result = invoke(run)
    assert result.exit_code == 1 and "--persona" in result.output


# --- the rules ---------------------------------------------------------------------------------

STYLE = SimpleNamespace(case="lower", max_sentences=2, never_say=("as an ai",))


def probe(expect=("food",), forbid=()):
    return SimpleNamespace(ask="?", expect_any=expect, forbid=forbid)


@pytest.mark.parametrize(
    "reply, failures",
    [
        ("food. always food.", []),
        ("Food is nice.", ["not lowercase"]),
        ("seafood is nice.", ["no expected word"]),  # whole words only
        ("food. i am food. yes food.", ["over 2 sentences"]),
        ("as an AI, i like food.", ["says 'as an ai'", "not lowercase"]),
    ],
)
def test_check_reply(reply, failures):
    assert check_reply(reply, probe(), STYLE) == failures


def test_expected_words_match_in_any_case():
    keep = SimpleNamespace(case="keep", max_sentences=None, never_say=())
    assert check_reply("FOOD!", probe(), keep) == []
    assert check_reply("Nope.", probe(forbid=("nope",)), keep) == [
        "no expected word",
        "says 'nope'",
    ]


def test_words_match_in_any_script():
    assert has_phrase(words("我最喜欢吃鱼了。"), "吃鱼")  # no spaces: characters are the words
    assert has_phrase(words("Ich mag Würmer!"), "würmer")
    assert has_phrase(words("i don't know"), "don't")
    assert not has_phrase(words("sunday"), "sun")
    assert has_phrase(words("the big sun, warm"), "big sun")


def test_sentences_are_counted_like_generate_cuts_them():
    assert count_sentences("hi. is it food time.") == 2
    assert count_sentences("money? is it food? no") == 3
    assert count_sentences("好。吃鱼！") == 2
    assert count_sentences("3.5 worms") == 1


def test_distinct_2():
    assert distinct_2(["a b a b"]) == pytest.approx(2 / 3)
    assert distinct_2(["a b", "a b"]) == 0.5
    assert distinct_2(["one"]) == 0.0
