"""Lints at the line: replies that ignore the value an open question names, follow-ups whose
questions ask for different kinds of answer, and TODO/capacity warnings with file:line:col."""

from __future__ import annotations

import re

from guppyforge.persona.schema import validate_persona

LINTED = """\
guppyforge: 1.1
name: lint
display_name: Lint
summary: s
grammar:
  thing: [the sun, the moon, rain, candles, books]
  feel: [warm, calm, sleepy]
topics:
  opinions:
    ask:
      - "what do you think of {{ thing }}"
      - "do you like {{ thing }}"
    say:
      - "{{ thing }}? i like it."
      - "candles are the best light."
    follow_ups:
      - ask: ["why", "what else do you like"]
        say: ["it makes me feel {{ feel }}."]
"""


def test_a_reply_ignoring_what_an_open_question_names_is_warned_with_both_lines(tmp_path):
    path = tmp_path / "lint.yaml"
    path.write_text(LINTED)
    warnings = validate_persona(path, 10).warnings
    ignored = [w for w in warnings if "never mentions it" in w]
    assert ignored == [
        f"{path}:15:9: topics.opinions.say[1]: answers the open question (one a yes or no cannot "
        "answer) at line 11:9, which names a "
        "{{ thing }}, but never mentions it, so it gives the same answer whatever thing was asked "
        "about. Echo {{ thing }} in the reply, or move the reply to a topic whose questions name "
        "nothing"
    ]  # and not for "do you like {{ thing }}": "candles are..." still answers a yes or no


def test_follow_up_questions_asking_different_things_are_named(tmp_path):
    path = tmp_path / "lint.yaml"
    path.write_text(LINTED)
    unlike = [w for w in validate_persona(path, 10).warnings if "unlike the question" in w]
    assert len(unlike) == 1 and unlike[0].startswith(f"{path}:17:22: ")
    assert (
        "follow_ups[0].ask[1]: asks for something else, unlike the question at line 17:15 "
        "(a reason)" in unlike[0]
    )


def test_every_validate_warning_carries_file_line_col(tmp_path):
    from guppyforge.persona.starter import write_persona

    path = write_persona("pip", None, tmp_path)
    report = validate_persona(path, 50_000_000)  # more than the starter can fill: capacity warns
    assert any("capacity:" in w for w in report.warnings)
    assert any("starter's placeholder" in w for w in report.warnings)
    for w in report.warnings:
        assert re.match(rf"{re.escape(str(path))}:\d+:\d+: ", w), w
