"""Personas: the version key, replies paired with their questions, turn mixes, the
sentence cap, the neutral starter, errors that name the fix, and the generated-text lint."""

from __future__ import annotations

import json
import re
from collections import Counter

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from guppyforge.apps.cli import cli
from guppyforge.apps.text import spread
from guppyforge.dataset.generate import TemplateTextWarning, generate_dataset
from guppyforge.errors import GuppyError
from guppyforge.files import builtin_persona
from guppyforge.persona.conversations import Sampler, keep_sentences
from guppyforge.persona.schema import load_persona, validate_persona

BODY = "name: t\nsummary: s\ntopics:\n  a:\n    ask: [hi]\n    say: [yo]\n"

# Two questions that bind different symbols, replies that echo one or the other or neither.
TWO_QUESTIONS = """\
guppyforge: 1.1
name: two
summary: two questions, two symbols
grammar:
  food: [worms, flakes, peas]
  mood: [sleepy, grumpy, cheerful]
  spot: [the castle, the rock]
topics:
  t:
    ask: ["do you like {{ food }}", "are you {{ mood }} today"]
    say:
      - "{{ food }}? yes, by {{ spot }}."
      - "{{ mood }}? maybe a little."
      - "i am at {{ spot }}."
      - "{% if food is defined %}{{ food }} again{% else %}no food{% endif %}, i say."
"""


def rows_of(out):
    return [r for s in ("train", "test") if (out / "data" / f"{s}-00000-of-00001.parquet").exists()
            for r in pq.read_table(out / "data" / f"{s}-00000-of-00001.parquet").to_pylist()]  # fmt: skip


@pytest.mark.parametrize("version, spec", [("1", (1, 0)), ("1.0", (1, 0)), ("1.1", (1, 1)),
                                           ("'1.1'", (1, 1))])  # fmt: skip
def test_versions_as_written(write_persona_file, version, spec):
    assert load_persona(write_persona_file(f"guppyforge: {version}\n" + BODY)).spec == spec


@pytest.mark.parametrize("version, needle", [
    ("1" * 5001, "a number of 5,001 characters is too long to read"), ("1.x", "must be 1 or 1.1 or 1.2 or 1.3 or 1.4"),
    ("[1]", "must be 1 or 1.1 or 1.2 or 1.3 or 1.4"), ("1.5", "reads up to 1.4"),
    ("1.10", "must be 1 or 1.1 or 1.2 or 1.3 or 1.4, not '1.10'"),
])  # fmt: skip
def test_a_bad_version_is_one_short_line(write_persona_file, version, needle):
    path = write_persona_file(f"guppyforge: {version}\n" + BODY)
    with pytest.raises(GuppyError) as info:
        load_persona(path)
    message = str(info.value)
    assert needle in message and "\n" not in message and len(message) < 300


def test_turns_needs_1_1_and_sets_the_generate_default(write_persona_file, tmp_path):
    v1 = write_persona_file("guppyforge: 1\nturns: {1: 1, 2: 1}\n" + BODY)
    with pytest.raises(GuppyError, match="`turns` needs persona format 1.1"):
        load_persona(v1)
    fish = (builtin_persona("guppy").read_text()).replace(
        "turns: {1: 5, 2: 3, 3: 2}", "turns: {2: 1}"
    )
    path = write_persona_file(fish, "fish.yaml")
    out = tmp_path / "d"
    generate_dataset(path, out, n=400, test_size=0, progress=False)
    counts = Counter(r["turns"] for r in rows_of(out))
    topics_with_follow_ups = {n for n, t in load_persona(path).topics.items() if t.follow_ups}
    made = [r for r in rows_of(out) if not r["template_id"].startswith("examples/")]
    assert all(r["turns"] == 2 for r in made if r["topic"] in topics_with_follow_ups), [
        r["template_id"] for r in made if r["topic"] in topics_with_follow_ups and r["turns"] != 2
    ]
    assert counts[2] > 100
    generate_dataset(path, tmp_path / "one", n=200, turns="1", test_size=0, progress=False)
    one = rows_of(tmp_path / "one")
    assert {r["turns"] for r in one if not r["template_id"].startswith("examples/")} == {1}


def test_no_reply_names_a_value_its_question_did_not_state(write_persona_file, tmp_path):
    path = write_persona_file(TWO_QUESTIONS)
    report = validate_persona(path, target=10)
    assert report.errors == [] and report.warnings == []
    out = tmp_path / "d"
    generate_dataset(path, out, n=25, test_size=0, progress=False)
    foods, moods = ("worms", "flakes", "peas"), ("sleepy", "grumpy", "cheerful")
    rows = rows_of(out)
    for r in rows:
        ask, say = (m["content"] for m in r["messages"][:2])
        for value in foods + moods:
            if value in say:
                assert value in ask, (ask, say)
    replies = {r["messages"][1]["content"] for r in rows}
    # `is defined` is true exactly when the question stated a food.
    assert "no food, i say." in replies and any(x.endswith(" again, i say.") for x in replies)


def test_format_1_warns_and_1_1_refuses_what_cannot_pair(write_persona_file):
    v1 = write_persona_file(TWO_QUESTIONS.replace("guppyforge: 1.1", "guppyforge: 1"))
    warnings = validate_persona(v1, target=10).warnings
    assert any("topics.t.say[0]: reads {{ food }}, but the question at line 10" in w
               for w in warnings)  # fmt: skip
    lonely = (
        TWO_QUESTIONS.replace('      - "i am at {{ spot }}."\n', "")
        .replace(
            '      - "{% if food is defined %}{{ food }} again{% else %}no food{% endif %}, i say."\n',
            "",
        )
        .replace('"{{ mood }}? maybe a little."', '"{{ mood }} {{ food }}? no."')
    )
    errors = validate_persona(write_persona_file(lonely), target=10).errors
    assert any("topics.t.ask[1]: no reply of topic 't' fits this question" in e for e in errors)
    assert any("topics.t.say[1]: echoes {{ food }}, {{ mood }}, which no single" in e
               for e in errors)  # fmt: skip


def test_sentence_cap_is_reported_and_keeps_the_main_clause(write_persona_file):
    text = BODY.replace(
        "say: [yo]", "say: ['beep. really? thank you. the dust is under the sofa.']"
    )
    path = write_persona_file("guppyforge: 1.1\nstyle: {max_sentences: 2}\n" + text)
    (warning,) = validate_persona(path, target=1).warnings[:1]
    assert ":8:" in warning and "can make 4 sentences, more than style.max_sentences (2)" in warning
    reply = Sampler(load_persona(path)).conversation(0).messages[1]["content"]
    assert reply == "thank you. the dust is under the sofa."
    assert keep_sentences("One. Two! Three? Four.", 2) == "One. Two!"


def test_new_persona_robot_is_neutral_and_validates(tmp_path):
    result = CliRunner().invoke(cli, ["new-persona", "robot", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "robot.yaml").read_text()
    assert not re.search(r"\b(cat|cats|kitty|meow|purr|tuna|mochi)\b", text, re.I)
    report = validate_persona(tmp_path / "robot.yaml")
    assert report.errors == []
    assert any(
        "summary: still holds the starter's placeholder 'TODO:'" in w for w in report.warnings
    )


def test_preview_spreads_over_the_data(tmp_path):
    indices = spread(200)
    assert len(set(indices)) == 200 and max(indices) > 50_000
    result = CliRunner().invoke(cli, ["preview", "guppy", "-n", "40", "--turns", "1"])
    path = str(builtin_persona("guppy"))
    result = CliRunner().invoke(cli, ["preview", path, "-n", "40", "--turns", "1"])
    users = [ln for ln in result.output.splitlines() if ln.startswith("user: ")]
    openers = Counter(u.split()[1].rstrip(",!?.") for u in users)
    assert len(users) == 40 and openers.most_common(1)[0][1] <= 12  # not "um," 11 times in 20
    topics = {ln.split("/")[0] for ln in result.output.splitlines() if ln.startswith("# ")}
    assert len(topics) >= 25


@pytest.mark.parametrize("say, needle", [
    ("\n      - {{ hi }}\n", "an unquoted template: YAML reads `{{` as a mapping. Quote it"),
    ("\n      - {{ hi }} there\n", "Quote a template that starts with `{`"),
    ("\n\t  - hi\n", "Indent with spaces, not tabs"),
    (" ['{{ }}']\n", "empty '{{ }}'. Put a symbol name inside"),
])  # fmt: skip
def test_errors_name_the_fix(write_persona_file, say, needle):
    text = "guppyforge: 1.1\nname: x\nsummary: s\ngrammar:\n  hi: [a]\ntopics:\n  a:\n"
    path = write_persona_file(text + "    ask: [hi]\n    say:" + say)
    errors = validate_persona(path).errors
    assert len(errors) == 1 and needle in errors[0], errors


def test_topic_did_you_mean(write_persona_file):
    sampler = Sampler(load_persona(builtin_persona("guppy")))
    with pytest.raises(GuppyError, match="Did you mean 'bubbles'"):
        sampler.conversation(0, topic="bubble")


def test_rows_with_template_text_are_refused(write_persona_file, tmp_path):
    path = write_persona_file(BODY.replace("say: [yo]", "say: ['yo {food}', 'yo', 'hey']")
                              .replace("ask: [hi]", "ask: [hi, hello, hey there]"))  # fmt: skip
    path.write_text("guppyforge: 1\n" + path.read_text())
    with pytest.warns(TemplateTextWarning, match=r"held template syntax.*'yo \{food\}'"):
        generate_dataset(path, tmp_path / "d", n=6, test_size=0, progress=False)
    assert not any("{" in m["content"] for r in rows_of(tmp_path / "d") for m in r["messages"])
    stats = json.loads((tmp_path / "d" / "stats.json").read_text())
    assert stats["refused_template_text"] == 3
    assert sum(stats["pairs"].values()) == stats["rows"] and "a/ask0@L6/say1@L7" in stats["pairs"]
    with pytest.raises(GuppyError, match="held template syntax"):
        generate_dataset(path, tmp_path / "e", n=6, test_size=0, strict=True, progress=False)


def test_builtin_guppy_60k_is_multi_turn_without_repeats(tmp_path):
    out = tmp_path / "guppy"
    result = generate_dataset("guppy", out, n=60_000, progress=False)
    rows = rows_of(out)
    assert result.unique_pct >= 95 and len(rows) == 60_000
    turns = Counter(r["turns"] for r in rows)
    assert turns[2] > 3_000 and turns[3] > 500, turns
    # Each follow-up once: a topic with k follow-ups makes at most k + 1 turns.
    follow_ups = {
        name: len(t.follow_ups) for name, t in load_persona(builtin_persona("guppy")).topics.items()
    }
    assert all(r["turns"] <= 1 + follow_ups.get(r["topic"], 16) for r in rows)
    for r in rows:
        lines = [m["content"] for m in r["messages"]]
        assert len(lines) == len(set(lines)), lines
