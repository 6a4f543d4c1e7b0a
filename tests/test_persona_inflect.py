"""English that agrees: plural, singular, a/an and verb agreement filters, in the sandbox."""

from __future__ import annotations

import pytest

from guppyforge.persona.conversations import Sampler
from guppyforge.persona.schema import load_persona, validate_persona
from guppyforge.persona.templating import a_an, plural, singular, verb


@pytest.mark.parametrize(
    ("word", "many"),
    [("e-reader", "e-readers"), ("cup of tea", "cups of tea"), ("mouse", "mice"),
     ("knife", "knives"), ("box", "boxes"), ("fish", "fish"), ("spiders", "spiders"),
     ("Biscuit", "Biscuits"), ("politics", "politics")],
)  # fmt: skip
def test_plural_and_singular_of_a_phrase(word, many):
    assert plural(word) == many
    assert plural(singular(many)) == many


@pytest.mark.parametrize(
    ("word", "with_article"),
    [("apple", "an apple"), ("unicorn", "a unicorn"), ("hour", "an hour"), ("e-reader",
     "an e-reader"), ("cup of tea", "a cup of tea"), ("42 cats", "42 cats")],
)  # fmt: skip
def test_a_an(word, with_article):
    assert a_an(word) == with_article


@pytest.mark.parametrize(
    ("subject", "form", "agreed"),
    [("spiders", "does", "do"), ("biscuits", "is", "are"), ("the sea", "is", "is"),
     ("cup of tea", "has", "has"), ("long walks", "frightens", "frighten"), ("fish", "is", "is"),
     ("politics", "is", "is"), ("the news", "is", "is"), ("maths", "has", "has")],
)  # fmt: skip
def test_verb_agrees_with_its_subject(subject, form, agreed):
    assert verb(subject, form) == agreed


def test_long_or_foreign_text_is_left_alone():
    long = "spider " * 40
    assert plural(long) == long and verb(long, "is") == "is"
    assert plural("猫") == "猫" and a_an("über") == "über"


PERSONA = """\
guppyforge: 1.1
name: agree
display_name: Agree
summary: s
grammar:
  thing: [spiders, the dark, biscuits, a cup of tea]
  food: [apple, egg, cake, e-reader]
topics:
  fears:
    ask: ["are you afraid of {{ thing }}"]
    say:
      - "{{ thing | capitalize }} {{ thing | verb('does') }} not frighten me."
      - "{% if thing %}{{ thing }} {{ thing | verb('is') }} fine{% endif %}."
  food:
    ask: ["do you want {{ food | a_an }}", "do you like {{ food | plural }}"]
    say: ["i like {{ food | plural }}."]
"""


def test_templates_agree_on_the_fast_path_and_in_jinja(write_persona_file):
    persona = load_persona(write_persona_file(PERSONA, "agree.yaml"))
    sampler = Sampler(persona)
    fears = sampler.topics["fears"].stages[0].says
    assert fears[0][1].parts is not None and fears[1][1].parts is None  # both paths are used
    texts = {m["content"] for i in range(200) for m in sampler.conversation(i).messages}
    assert "Spiders do not frighten me." in texts and "Biscuits do not frighten me." in texts
    assert "The dark does not frighten me." in texts
    assert "spiders are fine." in texts and "the dark is fine." in texts
    assert "do you want an apple" in texts and "do you want an e-reader" in texts
    assert "i like e-readers." in texts and "do you like cakes" in texts


def test_verb_takes_one_quoted_word(write_persona_file):
    bad = PERSONA.replace("verb('does')", "verb(thing)")
    report = validate_persona(write_persona_file(bad, "bad.yaml"))
    assert any("filter 'verb' takes one quoted word" in e for e in report.errors), report.errors
