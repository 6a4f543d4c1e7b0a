"""The persona commands end to end: new-persona -> validate -> preview, personas, --help."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from guppyforge import files
from guppyforge.apps.cli import cli
from guppyforge.persona.schema import load_persona


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_new_persona_validates_and_previews_the_same_twice(tmp_path):
    made = run("new-persona", "cat", "--dir", tmp_path)
    assert made.exit_code == 0, made.output
    path = tmp_path / "cat.yaml"
    text = path.read_text()
    assert "name: cat" in text and "display_name: Cat" in text and "# --- grammar" in text
    checked = run("validate", path)
    assert checked.exit_code == 0, checked.output
    warned = [line for line in checked.output.splitlines() if line.startswith("warning")]
    assert "total" in checked.output
    # The untouched starter follows the practice the docs teach: its only warnings are the
    # TODO: lines to replace, each at its line.
    assert warned and all("starter's placeholder 'TODO:'" in line for line in warned), warned
    assert "coverage: " in checked.output
    persona = load_persona(path)
    assert persona.spec == (1, 4)
    assert "cat" not in persona.raw["grammar"]["petname"]  # the user is not called by its name
    assert all(len(set(p.expect_any)) == len(p.expect_any) for p in persona.probes)
    assert len(persona.topics) >= 20 and len(persona.probes) >= 10 and persona.examples
    # The topics are what strangers send most (the stranger bank's intents), news included.
    assert {"greeting", "goodbye", "name", "how_are_you", "food", "fears", "bad_news"} <= set(
        persona.topics
    )
    # The symbols docs/writing-a-character.md uses for news exist in the starter.
    assert {"hey", "end"} <= set(persona.raw["grammar"])
    assert any(t.follow_ups for t in persona.topics.values())
    first, second = (
        run("preview", path, "-n", 5, "--seed", 3, "--turns", 1),
        run("preview", path, "-n", 5, "--seed", 3, "--turns", 1),
    )
    assert first.exit_code == 0 and first.output == second.output
    assert first.output.count("\nCat: ") == 5 and first.output.startswith("# ")
    other = run("preview", path, "-n", 5, "--seed", 4, "--topic", "food", "--turns", 2)
    assert other.output != first.output and other.output.count("\nuser: ") == 10


def test_new_persona_substitutes_the_name_and_refuses_to_overwrite(tmp_path):
    assert run("new-persona", "mr-whiskers", "--dir", tmp_path).exit_code == 0
    persona = load_persona(tmp_path / "mr-whiskers.yaml")
    assert (persona.name, persona.display_name) == ("mr-whiskers", "Mr Whiskers")
    before = (tmp_path / "mr-whiskers.yaml").read_bytes()
    again = run("new-persona", "mr-whiskers", "--dir", tmp_path)
    assert again.exit_code == 1 and again.output.strip().splitlines() == [
        f"error: {tmp_path / 'mr-whiskers.yaml'}: already exists. Choose another name or --dir, "
        "or delete it first"
    ]
    assert (tmp_path / "mr-whiskers.yaml").read_bytes() == before
    bad = run("new-persona", "Bad Name", "--dir", tmp_path)
    assert bad.exit_code == 1 and len(bad.output.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["mr-whiskers.yaml"]  # no temp files left


def test_new_persona_from_a_file_or_builtin_keeps_comments(tmp_path, mochi_file, monkeypatch):
    source = mochi_file.read_text().replace("name: mochi", "name: mochi   # the slug")
    mochi_file.write_text("# Mochi, by Jane\n" + source)
    assert (
        run("new-persona", "copy", "--from", mochi_file, "--dir", tmp_path / "out").exit_code == 0
    )
    copied = (tmp_path / "out" / "copy.yaml").read_text()
    assert copied.startswith("# Mochi, by Jane\n") and "name: copy   # the slug" in copied
    assert (
        "display_name: Mochi" in copied
        and load_persona(tmp_path / "out" / "copy.yaml").name == "copy"
    )
    monkeypatch.setattr(files, "personas_dir", lambda: mochi_file.parent)
    assert run("new-persona", "again", "--from", "mochi", "--dir", tmp_path / "out").exit_code == 0
    missing = run("new-persona", "x", "--from", "no-such-persona", "--dir", tmp_path)
    assert missing.exit_code == 1 and "no such built-in persona or file" in missing.output


def test_personas_lists_builtins_and_survives_a_broken_one(tmp_path, mochi_file, monkeypatch):
    (tmp_path / "broken.yaml").write_text("guppyforge: 1\nname: broken\n")
    monkeypatch.setattr(files, "personas_dir", lambda: tmp_path)
    result = run("personas")
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert (
        lines[0].startswith("broken")
        and "invalid" in lines[0]
        and "missing required key" in lines[0]
    )
    assert lines[1].startswith("mochi") and "Mochi: A house cat for tests. (2 topics)" in lines[1]


def test_validate_exit_codes_and_several_files(tmp_path, mochi_file, write_persona_file):
    broken = write_persona_file("guppyforge: 1\nname: x\nsummary: s\ntopics: {}\n", "broken.yaml")
    both = run("validate", mochi_file, broken, "--target", 6)
    assert both.exit_code == 1
    assert (
        f"{mochi_file}: ok" in both.output
        and "broken.yaml:4:9: topics: must be a mapping" in both.output
    )
    ok = run("validate", mochi_file, "--target", 6)
    assert ok.exit_code == 0 and "warning" not in ok.output
    low = run("validate", mochi_file)
    assert low.exit_code == 0 and "fewer than the 60,000 requested" in low.output
    dry = run("validate", mochi_file, "--target", 40)  # hello: fixed texts, drawn again and again
    assert (  # one warning for the reply, naming the asks it runs dry with
        f"{mochi_file}:25:11: topics.hello.say[0]: with 2 asks of topics.hello (ask[0], ask[1]) "
        "makes too few distinct conversations for -n 40 (as few as 1;"
    ) in dry.output
    assert (
        "topics.hello: about 2 rows predicted for -n 40, but its weight asks for 13" in dry.output
    )


@pytest.mark.parametrize("command", ["validate", "preview", "new-persona", "personas"])
def test_every_persona_command_has_an_example_in_help(command):
    result = run(command, "--help")
    assert result.exit_code == 0 and "guppyforge " + command in result.output
    assert "Example" in result.output
