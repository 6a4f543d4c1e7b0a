"""Fuzzing the library's entry points with random and mutated files (hypothesis).

Persona files, Character Cards and run folders, random or mutated from valid ones, go through
load_persona/validate_persona, read_card/import_card and load_run. Each example must succeed or
raise GuppyError (one line), never another exception, and within a time bound. Examples are
bounded (a fixed number, derandomized) so the whole file runs in well under a minute.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import bounded_work
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guppyforge.cards import export_card, import_card, read_card
from guppyforge.errors import GuppyError
from guppyforge.files import builtin_persona
from guppyforge.model.run import load_run
from guppyforge.persona.schema import load_persona, validate_persona

# GUPPYFORGE_FUZZ_SCALE=20 runs 20x the examples, freshly random: a longer hunt by hand.
SCALE = int(os.environ.get("GUPPYFORGE_FUZZ_SCALE", "1"))
# Function calls one example may make (bounded_work): measured up to ~470,000 (load_persona).
CALLS = 5_000_000
FUZZ = settings(
    max_examples=120 * SCALE,
    deadline=None,  # timed by hand below, with a bound that a busy machine still meets
    derandomize=SCALE == 1,  # the same examples every run: CI failures reproduce
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
CAT = builtin_persona("cat").read_bytes()  # big: validate takes ~1 s, so it is only loaded
PERSONA = b"""\
guppyforge: 1
name: mochi
display_name: Mochi
summary: A house cat for tests.
style: {case: lower, max_sentences: 2, never_say: [as an ai]}
grammar:
  food: [tuna, kibble, {text: the forbidden butter, weight: 0.5}]
  spot: [the sofa, "the top of the {{ furniture }}"]
  furniture: [fridge, wardrobe]
topics:
  food:
    weight: 2
    ask: [are you hungry, "do you want some {{ food }}"]
    say: ["{{ food }}? finally. i was on {{ spot }}.", "{% if food == 'tuna' %}yes{% endif %}."]
    follow_ups:
      - ask: ["and after the {{ food }}?"]
        say: ["a nap on {{ spot }}. {{ pick('food') | upper }}."]
  hello: {ask: [hi, hello], say: ["Hello. I Am Busy."]}
examples:
  - {topic: food, turns: [{user: what do you like, assistant: tuna. mostly tuna.}]}
probes:
  - {ask: are you hungry, expect_any: [tuna]}
"""
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),  # fmt: skip
    max_leaves=12,
)


@st.composite
def mutated(draw, original: bytes) -> bytes:
    """`original` with a few byte-level edits: flips, cuts, insertions, repeats, truncation."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(0, len(data) - 1)))
        kind = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "truncate"]))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 200))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=40) | st.sampled_from(
                [b"{{ (((x))) }}", b"{% if %}", b"*ref", b"&a [", b"\x1b[2J", b"\x00",
                 b"9" * 5000, b"- " * 50, b"[" * 300, b"\xff\xfe"]))  # fmt: skip
        elif kind == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 300))] * draw(st.integers(2, 30))
        else:
            del data[at:]
    return bytes(data)


def timed(call, *args) -> None:
    """Run one example: success or GuppyError, within CALLS; anything else fails the test."""
    with bounded_work(CALLS):
        try:
            call(*args)
        except GuppyError as exc:
            assert "\n" not in str(exc), str(exc)


def persona_file(folder: str, data: bytes) -> Path:
    path = Path(folder) / "p.yaml"
    path.write_bytes(data)
    return path


@FUZZ
@given(
    st.one_of(mutated(PERSONA), st.binary(max_size=3000), st.text(max_size=2000).map(str.encode))
)
def test_persona_files(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = persona_file(tmp, data)
        timed(load_persona, path)
        timed(validate_persona, path, 1000)


@settings(FUZZ, max_examples=25 * SCALE)
@given(mutated(CAT))
def test_builtin_persona_mutations(data):
    with tempfile.TemporaryDirectory() as tmp:
        timed(load_persona, persona_file(tmp, data))


@FUZZ
@given(st.dictionaries(st.sampled_from(["grammar", "topics", "style", "probes", "examples",
                                        "name", "guppyforge", "extensions"]),
                       JSONISH, max_size=5))  # fmt: skip
def test_persona_mappings(fields):
    """Valid YAML of the wrong shapes: each top-level key of the cat replaced by junk."""
    import yaml

    base = yaml.safe_load(PERSONA)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            text = yaml.safe_dump({**base, **fields}, allow_unicode=True).encode()
        except yaml.YAMLError:
            return
        timed(validate_persona, persona_file(tmp, text), 1000)


@pytest.fixture(scope="module")
def card_bytes(tmp_path_factory) -> bytes:
    return export_card("cat", tmp_path_factory.mktemp("card") / "c.json").read_bytes()


def test_cards(card_bytes):
    v1 = json.dumps({"name": "Mo", "description": "A cat.", "first_mes": "hi"}).encode()

    @FUZZ
    @given(st.one_of(mutated(card_bytes), mutated(v1), st.binary(max_size=2000),
                     JSONISH.map(lambda v: json.dumps({"spec": "chara_card_v2",
                                                       "data": v}).encode())))  # fmt: skip
    def one(data):
        with tempfile.TemporaryDirectory() as tmp:
            card = Path(tmp) / "c.json"
            card.write_bytes(data)
            timed(read_card, card)
            out = Path(tmp) / "out.yaml"
            timed(import_card, card, out)
            if out.exists():  # what import writes must validate (bar a bare mapping's text)
                try:
                    load_persona(out)
                except GuppyError:
                    ext = json.loads(data)["data"]["extensions"]["guppyforge"]
                    assert "yaml" not in ext and isinstance(ext["persona"], dict)

    one()


RUN_FILES = ["config.json", "tokenizer.json", "model.safetensors", "tokenizer_config.json"]


def test_run_folders(micro_run):
    originals = {name: (Path(micro_run) / name).read_bytes() for name in RUN_FILES}
    config = json.loads(originals["config.json"])

    @settings(FUZZ, max_examples=60 * SCALE)
    @given(st.sampled_from(RUN_FILES), st.data())
    def one(name, data):
        if name == "config.json" and data.draw(st.booleans()):  # junk in a model field
            key = data.draw(st.sampled_from([*config["model"], "extra"]))
            value = data.draw(JSONISH | st.integers(-(2**70), 2**70))
            bad = json.dumps({**config, "model": {**config["model"], key: value}}).encode()
        else:
            bad = data.draw(mutated(originals[name]))
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(shutil.copytree(micro_run, Path(tmp) / "run"))
            (run / name).write_bytes(bad)
            timed(load_run, run)

    one()
