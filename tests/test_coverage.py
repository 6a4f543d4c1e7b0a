"""`guppyforge coverage`: the stranger bank, and how much of it a persona's data answers."""

from __future__ import annotations

from click.testing import CliRunner

from guppyforge.apps.cli import cli
from guppyforge.dataset.coverage import persona_coverage, stranger_bank
from guppyforge.persona.schema import load_persona
from guppyforge.persona.variation import normalise

GREETER = """\
guppyforge: 1.4
name: finn
summary: A tiny fish who only says hello.
grammar:
  hello: [hi, hello, hey, hiya, good morning, hey there]
  how: [how are you, how are you doing, are you ok]
topics:
  greeting:
    ask: ["{{ hello }}", "{{ hello }} finn"]
    say: ["hello! i am finn.", "hi hi. the water is warm."]
  feelings:
    ask: ["{{ how }}", "{{ how }} today"]
    say: ["good! i swam a lap.", "fine. a bit hungry."]
"""


def test_the_stranger_bank_is_large_persona_free_and_holds_out_a_part():
    bank = stranger_bank("en")
    train = [m for i in bank for m in i.train]
    heldout = [m for i in bank for m in i.heldout]
    assert len(train) + len(heldout) >= 1_000 and len(bank) >= 40
    assert all(i.where and len(i.heldout) >= 5 for i in bank)
    # Nothing held out is a train message in other clothes (case, text-speak, punctuation).
    assert not {normalise(m) for m in heldout} & {normalise(m) for m in train}
    words = {w for m in train + heldout for w in normalise(m).split()}
    assert not words & {"guppy", "fish", "tank", "cat", "meow", "lighthouse"}


def test_coverage_counts_what_the_file_answers_and_names_what_it_does_not(write_persona_file):
    persona = load_persona(write_persona_file(GREETER))
    found = persona_coverage(persona, rows=600)
    assert 0 < found.heldout < 0.2  # greetings and how-are-you only: a small part of the bank
    assert len(found.missing["greet"]) < found.sizes["greet"] / 2  # greetings are answered
    assert len(found.missing["food"]) == found.sizes["food"]  # nothing about food
    report = found.report()
    assert "food:" in report and "add a topic for" in report
    assert persona_coverage(persona, rows=600).report() == report  # the same every time


def test_validate_says_the_coverage_the_turn_mix_and_whether_warnings_came(write_persona_file):
    path = write_persona_file(
        GREETER.replace("guppyforge: 1.4", "guppyforge: 1.4\nturns: {1: 1, 2: 1}")
    )
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "coverage: " in result.output and f"guppyforge coverage {path}" in result.output
    assert "turns per row: 1: 100% (asked 1: 50%, 2: 50%)" in result.output
    assert "a topic with k follow-ups makes at most k + 1 turns" in result.output
    out = CliRunner().invoke(cli, ["coverage", str(path), "--shown", "1"]).output
    assert out.startswith("coverage: ") and "food:" in out
