"""Loading and validating persona files: typed objects, one-line errors, warnings, capacity."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from guppyforge.errors import GuppyError
from guppyforge.persona.conversations import Sampler
from guppyforge.persona.forecast import capacity
from guppyforge.persona.schema import load_persona, validate_persona
from guppyforge.persona.templating import a_an, plural
from guppyforge.persona.types import Alternative

ROOT = Path(__file__).resolve().parent.parent  # the repository: docs/ is not shipped


def errors_of(write, text: str) -> list[str]:
    return validate_persona(write(text)).errors


def test_load_builds_typed_frozen_objects(mochi_file):
    p = load_persona(mochi_file)
    assert (p.name, p.display_name, p.style.case, p.style.max_sentences) == (
        "mochi",
        "Mochi",
        "lower",
        2,
    )
    assert list(p.topics) == ["food", "hello"] and p.topics["food"].weight == 2.0
    ask = p.topics["food"].ask[1]
    assert (ask.text, ask.line, ask.key) == (
        "do you want some {{ food }}",
        15,
        "topics.food.ask[1]",
    )
    butter = p.grammar["food"].alternatives[2]
    assert isinstance(butter, Alternative) and butter.weight == 0.5
    assert butter.text == "the forbidden butter" and butter.line == 7
    assert p.examples[0].turns == (("what do you like", "tuna. mostly tuna."),)
    assert p.probes[0].forbid == ("as an ai",)  # never_say is always forbidden
    assert p.raw["grammar"]["furniture"] == ["fridge", "wardrobe"]  # for exports
    assert len(p.sha256) == 64
    with pytest.raises(AttributeError):
        p.name = "other"  # frozen


def test_the_documented_example_validates():
    doc = (ROOT / "docs" / "persona-format.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(.*?)```", doc, re.S).group(1)
    path = Path(__import__("tempfile").mkdtemp()) / "doc-example.yaml"
    path.write_text(block, encoding="utf-8")
    report = validate_persona(path, target=10)
    assert report.errors == []
    assert report.warnings == []
    assert report.capacity and all(c.conversations > 0 for c in report.capacity.values())


def test_unknown_key_says_where_and_did_you_mean(write_persona_file, mochi_file):
    text = mochi_file.read_text().replace("topics:", "topcs:")
    errors = errors_of(write_persona_file, text)
    assert any(
        re.search(r"p\.yaml:10:1: topcs: unknown key 'topcs'\. Did you mean 'topics'\?", e)
        for e in errors
    )
    assert any("missing required key 'topics'" in e for e in errors)


def test_every_error_is_collected_and_load_raises_the_first(write_persona_file, mochi_file):
    text = (
        mochi_file.read_text()
        .replace("weight: 2", "weight: -1")
        .replace("{{ food }}? finally", "{{ fod }}? finally")
        .replace("case: lower", "case: lowercase")
    )
    path = write_persona_file(text)
    errors = validate_persona(path).errors
    assert len(errors) == 3, errors
    assert (
        "style.case: must be lower, upper or keep, not 'lowercase'. Did you mean 'lower'?"
        in errors[0]
    )
    assert "topics.food.weight: weight must be a number > 0" in errors[1]
    assert "topics.food.say[0]: unknown symbol 'fod'. Did you mean 'food'?" in errors[2]
    with pytest.raises(GuppyError) as exc:
        load_persona(path)
    assert str(exc.value) == errors[0] and "\n" not in errors[0]


@pytest.mark.parametrize("weight", ["0", "-2", ".nan", ".inf", "heavy", "true"])
def test_bad_weights_are_refused(write_persona_file, mochi_file, weight):
    text = mochi_file.read_text().replace("weight: 0.5", f"weight: {weight}")
    errors = errors_of(write_persona_file, text)
    assert len(errors) == 1 and "grammar.food[2].weight: weight must be a number > 0" in errors[0]


def test_topic_without_say_and_empty_lists(write_persona_file):
    text = "guppyforge: 1\nname: x\nsummary: s\ntopics:\n  a:\n    ask: [hi]\n  b:\n    ask: []\n    say: [yo]\n"
    errors = errors_of(write_persona_file, text)
    assert any("topics.a: missing required key 'say'" in e for e in errors)
    assert any("topics.b.ask: must be a non-empty list" in e for e in errors)


def test_forbidden_template_syntax_names_the_line(write_persona_file, mochi_file):
    text = mochi_file.read_text().replace("i only eat {{ food }}.", "{{ food | center(9999999) }}")
    (error,) = errors_of(write_persona_file, text)
    assert ":18:" in error and "filter 'center' is not allowed" in error
    text = mochi_file.read_text().replace(
        '"{{ food }}? finally.', '"{% set a = food %}{% set b = a ~ a %}'
    )
    (error,) = errors_of(write_persona_file, text)
    assert "'a' is a set variable" in error


def test_grammar_text_allows_only_references(write_persona_file, mochi_file):
    text = mochi_file.read_text().replace(
        '"the top of the {{ furniture }}"', '"{% if 1 %}x{% endif %}"'
    )
    (error,) = errors_of(write_persona_file, text)
    assert "grammar.spot[1]: grammar text may only use {{ name }}" in error


def test_unused_symbols_are_warnings(write_persona_file, mochi_file):
    text = mochi_file.read_text().replace("grammar:\n", "grammar:\n  mood: [sleepy]\n")
    report = validate_persona(write_persona_file(text))
    assert report.errors == []
    assert any("grammar.mood: symbol is never used" in w for w in report.warnings)


def test_duplicate_keys_and_yes_no_stay_text(write_persona_file, mochi_file):
    text = mochi_file.read_text().replace(
        "  furniture: [fridge, wardrobe]", "  furniture: [yes, no, 1.50]\n  spot: [x]"
    )
    errors = errors_of(write_persona_file, text)
    assert len(errors) == 1 and "grammar.spot: key 'spot' appears twice" in errors[0]
    text = mochi_file.read_text().replace("[fridge, wardrobe]", "[yes, no, 1.50]")
    p = load_persona(write_persona_file(text))
    assert [a.text for a in p.grammar["furniture"].alternatives] == ["yes", "no", "1.50"]


def test_capacity_is_exact_and_matches_what_sampling_makes(mochi_file):
    p = load_persona(mochi_file)
    table = capacity(p)
    # food: asks "are you hungry" (1) + "do you want some X" (3). Replies: "X? finally. ... on S."
    # 3 x 3 spots + "i only eat X." 3 + "always. feed me now." 1. Format 1.1 pairs a reply that
    # echoes X only with a question naming X: "are you hungry" gets the last reply alone, and a
    # prompt naming X gets 3 + 1 + 1.
    assert (table["food"].prompts, table["food"].replies) == (4, 13)
    assert table["food"].conversations == 1 * 1 + 3 * 5 and table["food"].exact
    assert (table["hello"].prompts, table["hello"].replies, table["hello"].conversations) == (
        2,
        1,
        2,
    )
    sampler = Sampler(p, seed=3)
    seen = {
        tuple(m["content"] for m in sampler.conversation(i, topic="food").messages)
        for i in range(3000)
    }
    assert len(seen) == table["food"].conversations


def test_capacity_is_a_floor_when_enumeration_is_capped(mochi_file, monkeypatch):
    import guppyforge.persona.forecast as cap

    monkeypatch.setattr(cap, "SYMBOL_CAP", 2)
    food = cap.capacity(load_persona(mochi_file))["food"]
    assert not food.exact and food.conversations < 12


def test_english_filters():
    assert [plural(w) for w in ["mouse", "fly", "fish", "box", "leaf", "toy", "hair tie", "Bird"]] == [
        "mice", "flies", "fish", "boxes", "leaves", "toys", "hair ties", "Birds"
    ]  # fmt: skip
    assert plural("猫") == "猫"
    assert [a_an(w) for w in ["apple", "unicorn", "hour", "bird", "euro", "owl"]] == [
        "an apple", "a unicorn", "an hour", "a bird", "a euro", "an owl"
    ]  # fmt: skip
