"""`guppyforge eval`: perplexity, probe pass rate, memorised rate and distinct-2 of a run."""

from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from guppyforge.apps.cli import cli
from guppyforge.evaluate.score import check_reply, count_sentences, distinct_2, has_phrase, words

KEYS = {"probe_pass_rate", "perplexity", "memorized_rate", "distinct_2", "probes", "test_loss",
        "perturbed_pass_rate", "blind_pass_rate", "offtopic_pass_rate"}  # fmt: skip


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
    for label in ("own probes", "perturbed", "blind", "off-topic", "perplexity", "memorised",
                  "distinct-2"):  # fmt: skip
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


# --- the four rates ----------------------------------------------------------------------------


def test_four_rates_side_by_side_on_a_micro_run(micro_run, figures, tmp_path):
    output, got = figures
    assert got["blind"] is None and got["blind_pass_rate"] is None  # finn has no blind set
    assert "no blind probe set" in output
    perturbed = got["perturbed"]
    assert [p["ask"] for p in perturbed] == [p["ask"] for p in got["probes"]]
    asked = [a for p in perturbed for a in p["asked"]]
    assert len(asked) == 6 and sum(a not in ("are you hungry", "what is the meaning of life")
                                   for a in asked) >= 5  # fmt: skip
    off = got["offtopic"]
    assert off["samples"] == 20 and 0 <= got["offtopic_pass_rate"] <= 1
    from guppyforge.persona.conversations import pool

    assert {r["ask"] for r in off["replies"]} <= set(pool("heldout"))
    from conftest import micro_conversations

    vocabulary = {w for conv in micro_conversations("train") for m in conv
                  if m["role"] == "assistant" for w in words(m["content"])}  # fmt: skip
    for r in off["replies"]:
        broken = (r["reply"] != r["reply"].lower() or not r["reply"] or "as an ai" in r["reply"]
                  or "assistant" in r["reply"] or count_sentences(r["reply"]) > 4
                  or not set(words(r["reply"])) <= vocabulary)  # fmt: skip
        assert bool(r["failures"]) == broken, r

    probes = tmp_path / "blind.yaml"  # a throwaway blind set: one probe it passes, one it cannot
    probes.write_text("written_by: a test\nprobes:\n  - {ask: are you hungry, expect_any: "
                      "[worms, flakes, bugs, yes]}\n  - {ask: hi, expect_any: [zebra]}\n")  # fmt: skip
    out = tmp_path / "blind.json"
    result = invoke(micro_run, "--probes", probes, "--samples", "2", "--seed", "1",
                    "--offtopic-samples", "3", "--json", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    blind = json.loads(out.read_text())
    assert blind["blind"]["file"] == str(probes) and len(blind["blind"]["probes"]) == 2
    assert blind["blind"]["probes"][1]["passed"] == 0
    assert blind["blind_pass_rate"] == pytest.approx(blind["blind"]["probes"][0]["passed"] / 4)
    assert f"2 probes of {probes}" in result.output and blind["offtopic"]["samples"] == 3


def test_a_bad_probe_file_is_one_line(micro_run, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("probes:\n  - {ask: hi, expect: [x]}\n")
    result = invoke(micro_run, "--probes", bad, "--samples", "1")
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "bad.yaml:2:" in result.output and "unknown key 'expect'" in result.output
