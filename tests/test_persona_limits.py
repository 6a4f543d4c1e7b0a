"""Hostile persona files: each limit refuses its file via the CLI with one line, fast, no traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from conftest import bounded_work

from guppyforge.apps.cli import cli


def persona(grammar: str = "  food: [tuna]\n", say: str = "{{ food }}.") -> str:
    """An otherwise valid persona around a grammar block and one reply template."""
    return (
        "guppyforge: 1\nname: hostile\nsummary: A test.\ngrammar:\n"
        + grammar
        + f"topics:\n  t:\n    ask: [hi]\n    say: [{say!r}]\n"
    )


# Function calls `validate` may make on one hostile file: ~136,000 for the costliest here.
VALIDATE_CALLS = 2_000_000


def refused(path, *needles: str) -> str:
    """Run `guppyforge validate PATH`; assert exit 1 with exactly one `error:` line."""
    with bounded_work(VALIDATE_CALLS):
        result = CliRunner().invoke(cli, ["validate", str(path)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_python_tag_is_refused(write_persona_file):
    text = 'guppyforge: 1\nname: x\nsummary: !!python/object/apply:os.system ["echo pwned"]\n'
    line = refused(write_persona_file(text), "tag '!!python/object/apply:os.system'", ":3:10:")
    assert "plain data" in line


def test_alias_bomb_is_refused(write_persona_file):
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    refused(write_persona_file("guppyforge: 1\n" + "\n".join(levels) + "\n"), "100,000 values")


def test_alias_count_is_refused(write_persona_file):
    text = "guppyforge: 1\nx: &x hi\ny: [" + ", ".join(["*x"] * 101) + "]\n"
    refused(write_persona_file(text), "more than 100 aliases")


@pytest.mark.parametrize(
    "say",
    [
        "{{ food.__class__.__mro__ }}",
        "{{ pick.__globals__ }}",
        "{{ ''.__class__.__subclasses__() }}",
        "{{ food['__class__'] }}",
        "{% for x in food %}{{ x }}{% endfor %}",
        "{{ food * 100000000 }}",
        "{% include 'other.j2' %}",
    ],
)
def test_template_sandbox_escapes_are_refused(write_persona_file, say):
    line = refused(write_persona_file(persona(say=say)), "topics.t.say[0]", "not allowed")
    assert ":9:" in line  # the YAML line of that say


def test_endless_grammar_recursion_is_refused(write_persona_file):
    grammar = '  food: ["{{ more }}"]\n  more: ["and {{ food }}"]\n'
    refused(write_persona_file(persona(grammar)), "grammar.food", "can never finish")


def test_too_deep_grammar_is_refused(write_persona_file):
    chain = "".join(f'  s{i}: ["{{{{ s{i + 1} }}}}"]\n' for i in range(13)) + "  s13: [end]\n"
    line = refused(write_persona_file(persona(chain, say="{{ s0 }}")), "nested symbols")
    assert "needs 14" in line and "limit of 12" in line


def test_grammar_work_limit_is_refused(write_persona_file):
    # Each level doubles: s0 needs 2,047 expansions though it is only 11 levels deep.
    grammar = "".join(f'  s{i}: ["{{{{ s{i + 1} }}}}{{{{ s{i + 1} }}}}"]\n' for i in range(10))
    line = refused(write_persona_file(persona(grammar + "  s10: [x]\n", say="{{ s0 }}")))
    assert "grammar.s0: needs 2,047 expansions" in line and "limit of 2,000" in line


def test_binary_garbage_is_refused(write_persona_file):
    refused(write_persona_file(b"\x7fELF\x02\x01\x00\x00garbage\xff\xfe"), "NUL bytes")


def test_bad_utf8_is_refused(write_persona_file):
    text = "guppyforge: 1\nname: cafe\nsummary: caf\xe9 au lait\n".encode("latin-1")
    refused(write_persona_file(text), "not valid UTF-8", "p.yaml:3:")


@pytest.mark.parametrize("text", ["", "   \n\n", "# only a comment\n", "---\n"])
def test_empty_file_is_refused(write_persona_file, text):
    refused(write_persona_file(text), "file is empty", "new-persona")


def test_list_at_top_level_is_refused(write_persona_file):
    refused(write_persona_file("- guppyforge: 1\n- name: x\n"), "top level is a list")


def test_future_spec_version_is_refused(write_persona_file):
    text = persona().replace("guppyforge: 1", "guppyforge: 7") + "new_v7_key: {}\n"
    refused(write_persona_file(text), "persona format 7", "Upgrade")


def test_missing_spec_version_is_refused(write_persona_file):
    refused(write_persona_file(persona().replace("guppyforge: 1\n", "")), "Add `guppyforge: 1`")


def test_absurd_nesting_is_refused(write_persona_file):
    text = "guppyforge: 1\nx: " + "[" * 50_000 + "]" * 50_000 + "\n"
    refused(write_persona_file(text), "nesting deeper than 20")


def test_oversize_file_is_refused(write_persona_file):
    text = persona() + "# " + "x" * (1 << 20) + "\n"
    refused(write_persona_file(text), "larger than the 1 MiB limit")


def test_huge_output_is_refused(write_persona_file):
    refused(write_persona_file(persona(say="x" * 2_500)), "2,500 characters", "2,000 limit")
    # The same limit at sampling time: a grammar whose every expansion is 4,000 characters.
    grammar = f'  q: ["{"y" * 1000}"]\n  h: ["{{{{ q }}}}{{{{ q }}}}"]\n  big: ["{{{{ h }}}}{{{{ h }}}}"]\n'
    refused(write_persona_file(persona(grammar, say="{{ big }}")), "more than 2,000 characters")


def test_too_many_symbols_is_refused(write_persona_file):
    grammar = "".join(f"  s{i}: [x]\n" for i in range(2_001))
    refused(write_persona_file(persona(grammar)), "2,001 symbols", "2,000")


def test_too_many_alternatives_is_refused(write_persona_file):
    grammar = "  food: [" + ", ".join(f"f{i}" for i in range(5_001)) + "]\n"
    refused(write_persona_file(persona(grammar)), "grammar.food", "5,001 alternatives")


def test_missing_file_is_one_line(tmp_path):
    refused(tmp_path / "nope.yaml", "cannot read the file")
