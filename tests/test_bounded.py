"""Bounded work: requests past a persona's capacity, and personas at the limits.

bench/bench_limits.py measures the same personas at 60K rows against a built-in one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from guppyforge.apps.cli import cli
from guppyforge.persona import bounds
from guppyforge.persona.conversations import Sampler
from guppyforge.persona.schema import load_persona, validate_persona

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
from bench_limits import write_personas  # noqa: E402
from conftest import bounded_work

FISH = """\
guppyforge: 1
name: finn
display_name: Finn
summary: A tiny fish.
grammar:
  food: [worms, flakes, bugs]
topics:
  food:
    ask: ["are you hungry", "do you like {{ food }}"]
    say: ["{{ food }}? yes."]
"""


@pytest.fixture(scope="module")
def at_the_limits(tmp_path_factory) -> dict[str, Path]:
    return write_personas(tmp_path_factory.mktemp("limits"))


def test_a_huge_strict_request_is_refused_at_once(tmp_path):
    (tmp_path / "fish.yaml").write_text(FISH)
    for n in ("10000000000", "100000"):
        with bounded_work(200_000):  # measured ~16,000; was: hours, memory climbing
            result = CliRunner().invoke(cli, ["generate", str(tmp_path / "fish.yaml"), "-n", n,
                                              "--strict", "--out", str(tmp_path / "d"), "-q"])  # fmt: skip
        assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert "only 6 distinct" in result.output and not (tmp_path / "d").exists()


def test_every_limit_persona_validates(at_the_limits):
    for name, path in at_the_limits.items():
        assert validate_persona(path).errors == [], name


def test_grammar_work_past_the_message_limit_is_refused(tmp_path):
    # 40 x 40 expansions per reply: inside the old 2,000 limit, and ~100x a built-in's cost.
    grammar = '  a: ["' + "{{b}}" * 40 + '"]\n  b: ["' + "{{c}}" * 40 + '"]\n  c: [x, y]\n'
    text = FISH.replace("grammar:\n", "grammar:\n" + grammar).replace('"{{ food }}? yes."',
                                                                      '"{{ a }}"')  # fmt: skip
    (tmp_path / "p.yaml").write_text(text)
    errors = validate_persona(tmp_path / "p.yaml").errors
    assert (
        len(errors) == 1 and f"more than {bounds.MAX_MESSAGE_WORK} symbol expansions" in errors[0]
    )


def test_a_heavy_symbol_of_5000_alternatives_draws_fast(at_the_limits):
    # One heavy alternative kept the shuffle bag's exact draw at O(5,000) per expansion:
    # 0.7 s per conversation before, ~0.1 ms now.
    sampler = Sampler(load_persona(at_the_limits["heavy-bag"]), 7)
    with bounded_work(1_000_000):  # measured ~120,000 (~600 a conversation)
        for i in range(200):
            sampler.conversation(i)


@pytest.mark.parametrize("bad", [{"n": float("nan")}, {"workers": 1.5}, {"n": 10**10}])
def test_generate_as_a_library_refuses_bad_numbers(tmp_path, bad):
    from guppyforge.dataset.generate import generate_dataset
    from guppyforge.errors import GuppyError

    with pytest.raises(GuppyError):
        generate_dataset("guppy", tmp_path / "d", progress=False, **bad)
    assert not (tmp_path / "d").exists()
