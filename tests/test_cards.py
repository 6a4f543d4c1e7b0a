"""Character Card import/export (guppyforge/cards/): skeletons that validate, nothing dropped,
and personas that survive a trip through a card unchanged."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from guppyforge.apps.cli import cli
from guppyforge.cards import escape_jinja, export_card, import_card, parse_examples
from guppyforge.errors import GuppyError
from guppyforge.files import builtin_personas
from guppyforge.persona.conversations import Sampler
from guppyforge.persona.schema import load_persona, validate_persona
from guppyforge.persona.templating import compile_text, environment

CARDS = Path(__file__).parent / "fixtures" / "cards"
# Every built-in persona, plus a fixture full of YAML traps (`yes` and 1.10 meant as text).
PERSONAS = [*builtin_personas(), CARDS / "persona.yaml"]
LOCATION = {"path", "sha256", "file", "line", "column", "where"}  # where it was read, not what


def canonical(persona) -> object:
    """A loaded persona as plain data, minus where it was read from (file, lines)."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in LOCATION}
        if isinstance(value, (list, tuple)):
            return [strip(v) for v in value]
        return value

    return strip(dataclasses.asdict(persona))


def card(name: str) -> dict:
    return json.loads((CARDS / name).read_text(encoding="utf-8"))


def greetings_of(persona) -> set[str]:
    """Every reply the engine can make in the greeting topic (it has no grammar to expand)."""
    sampler = Sampler(persona, 0)
    return {sampler.conversation(i, topic="greeting").messages[1]["content"] for i in range(60)}


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", PERSONAS, ids=lambda p: p.name)
def test_persona_survives_export_then_import(path: Path, tmp_path: Path) -> None:
    card_path = export_card(path, tmp_path / "card.json")
    back = import_card(card_path, tmp_path / "back.yaml")
    original, restored = load_persona(path), load_persona(back)
    assert restored.raw == original.raw
    assert canonical(restored) == canonical(original)
    assert back.read_bytes() == path.read_bytes()  # the file itself, comments included


@pytest.mark.parametrize("path", PERSONAS, ids=lambda p: p.name)
def test_card_without_the_file_text_still_gives_the_same_mapping(path, tmp_path) -> None:
    # Another tool may keep only the parsed persona: the mapping must still come back exactly.
    exported = json.loads(export_card(path, tmp_path / "card.json").read_text(encoding="utf-8"))
    del exported["data"]["extensions"]["guppyforge"]["yaml"]
    (tmp_path / "card.json").write_text(json.dumps(exported), encoding="utf-8")
    back = import_card(tmp_path / "card.json", tmp_path / "back.yaml")
    assert validate_persona(back).errors == []
    assert load_persona(back).raw == load_persona(path).raw


def test_exported_card_is_v2_with_the_persona_fields(tmp_path: Path) -> None:
    path = CARDS / "persona.yaml"
    data = json.loads(export_card(path, tmp_path / "c.json").read_text(encoding="utf-8"))["data"]
    persona = load_persona(path)
    assert data["name"] == "Polly"
    assert data["description"].startswith(persona.summary)
    assert "She likes crackers." in data["description"]
    assert data["tags"] == ["bird", "yes"]  # as written, not [..., true]
    assert data["creator"] == "guppyforge tests" and data["character_version"] == "1.10"
    assert data["first_mes"] == "hello, friend."  # the plain `say`, styled (case: lower)
    assert data["mes_example"] == (
        "<START>\n{{user}}: polly want a cracker?\n{{char}}: yes. always yes."
    )
    assert data["extensions"]["guppyforge"]["persona"] == persona.raw
    assert data["extensions"]["guppyforge"]["format"] == 1


# --- importing real cards -------------------------------------------------------------------


def test_v2_card_becomes_a_persona_that_validates(tmp_path: Path) -> None:
    out = import_card(CARDS / "v2_card.json", tmp_path / "barnacle.yaml")
    assert validate_persona(out).errors == []
    p = load_persona(out)
    assert (p.name, p.display_name) == ("captain-barnacle", "Captain Barnacle")
    assert p.summary == "Captain Barnacle is a retired pirate who runs a tea shop by the harbour."
    assert "He lost a leg to a very rude octopus." in p.notes
    assert "Personality: grumpy, generous, dramatic" in p.notes
    assert (p.author, p.version, p.tags) == ("Jane Doe", "1.2", ("pirate", "tea", "harbour"))
    assert "hello Captain Barnacle" in [t.text for t in p.topics["greeting"].ask]
    # {{char}} -> the name, {{user}} -> "you"; the card's own braces stay text, never code.
    assert greetings_of(p) == {
        "*Captain Barnacle looks up from the kettle.* Ahoy, you! Shut that door before the "
        "storm gets in.",
        "Back again, you? The {{ kettle }} is {% raw %}always{% endraw %} on.",
        "*grumbles* We're closed. ...Oh, it's you. Come in.",
    }
    assert [e.turns for e in p.examples] == [
        (("What tea do you have?", "Seaweed tea, matey. Good for the bones.\nAnd for the soul."),),
        (
            ("Tell me about the octopus.", "Rude, it was. Eight arms and not one manner."),
            ("Really?", "Aye."),
        ),
    ]
    assert p.probes and p.probes[0].expect_any


def test_v2_card_keeps_every_field_it_does_not_use(tmp_path: Path) -> None:
    original = card("v2_card.json")
    p = load_persona(import_card(CARDS / "v2_card.json", tmp_path / "b.yaml"))
    kept = p.extensions["character_card"]
    assert (kept["spec"], kept["spec_version"]) == ("chara_card_v2", "2.0")
    for key in ("scenario", "creator_notes", "system_prompt", "post_history_instructions",
                "character_book", "extensions", "x_custom_field"):  # fmt: skip
        assert kept["data"][key] == original["data"][key], key
    # the block where nobody speaks first is not an example, so it is kept as text
    assert kept["data"]["mes_example"] == (
        "<START>\n*The kettle whistles somewhere in the back.*\n{{char}}: Tea's ready."
    )
    # top-level V1 copies that repeat `data` are dropped; others (and front-end settings) kept
    assert kept["root"] == {
        "description": original["description"],
        "avatar": "none",
        "talkativeness": "0.5",
    }


def test_export_puts_the_kept_v2_fields_back(tmp_path: Path) -> None:
    original = card("v2_card.json")
    persona = import_card(CARDS / "v2_card.json", tmp_path / "b.yaml")
    exported = json.loads(export_card(persona, tmp_path / "b.json").read_text(encoding="utf-8"))
    data = exported["data"]
    assert (exported["spec"], exported["spec_version"]) == ("chara_card_v2", "2.0")
    for key in ("scenario", "creator_notes", "system_prompt", "post_history_instructions",
                "character_book", "x_custom_field", "name", "personality", "tags", "creator",
                "character_version"):  # fmt: skip
        assert data[key] == original["data"][key], key
    assert {"talkativeness", "depth_prompt", "guppyforge"} <= data["extensions"].keys()
    assert data["extensions"]["depth_prompt"] == original["data"]["extensions"]["depth_prompt"]
    assert {exported[k] for k in ("avatar", "talkativeness")} == {"none", "0.5"}
    assert exported["description"] == original["description"]
    assert data["first_mes"].startswith("*Captain Barnacle looks up from the kettle.* Ahoy, you!")
    assert data["alternate_greetings"][0] == (
        "Back again, you? The {{ kettle }} is {% raw %}always{% endraw %} on."
    )
    assert data["mes_example"].count("<START>") == 3  # two examples + the kept narration block
    assert data["mes_example"].endswith("{{char}}: Tea's ready.")
    assert "He lost a leg to a very rude octopus." in data["description"]


def test_v3_card_imports_and_exports_its_v3_fields(tmp_path: Path) -> None:
    original = card("v3_card.json")
    out = import_card(CARDS / "v3_card.json", tmp_path / "quill.yaml")
    assert validate_persona(out).errors == []
    p = load_persona(out)
    assert p.display_name == "Professor Quill Featherstone"
    assert p.notes.endswith("Quill is patient and speaks softly.")  # V3: nickname for {{char}}
    assert greetings_of(p) == {"Good evening, you. I am Quill. Shall we look at the stars?"}
    v3 = ("nickname", "creator_notes_multilingual", "group_only_greetings", "assets", "source",
          "creation_date", "modification_date", "creator_notes")  # fmt: skip
    kept = p.extensions["character_card"]
    assert kept["spec"] == "chara_card_v3"
    assert {k: kept["data"][k] for k in v3} == {k: original["data"][k] for k in v3}
    data = json.loads(export_card(out, tmp_path / "q.json").read_text(encoding="utf-8"))["data"]
    assert {k: data[k] for k in v3} == {k: original["data"][k] for k in v3}
    assert data["mes_example"] == original["data"]["mes_example"]


def test_v1_card_is_accepted(tmp_path: Path) -> None:
    out = import_card(CARDS / "v1_card.json", tmp_path / "biscuit.yaml")
    assert validate_persona(out).errors == []
    p = load_persona(out)
    assert (p.name, p.summary) == ("biscuit", "A golden retriever who loves everyone.")
    assert greetings_of(p) == {"*wags tail* Hi hi hi!"}


def test_greeting_too_long_for_a_message_is_kept_not_dropped(tmp_path: Path) -> None:
    long = "Ahoy! " * 400  # 2,400 characters: more than a persona message may hold
    data = {"name": "Long", "first_mes": long, "alternate_greetings": ["Hi."]}
    (tmp_path / "c.json").write_text(json.dumps({"spec": "chara_card_v2", "data": data}))
    out = import_card(tmp_path / "c.json", tmp_path / "long.yaml")
    assert validate_persona(out).errors == []
    p = load_persona(out)
    assert greetings_of(p) == {"Hi."}
    assert p.extensions["character_card"]["data"]["alternate_greetings"] == [long.strip()]
    exported = json.loads(export_card(out, tmp_path / "back.json").read_text(encoding="utf-8"))
    assert exported["data"]["alternate_greetings"] == [long.strip()]


def test_written_yaml_is_readable(tmp_path: Path) -> None:
    text = import_card(CARDS / "v2_card.json", tmp_path / "b.yaml").read_text(encoding="utf-8")
    assert text.startswith("# Captain Barnacle: a persona skeleton")
    assert "grammar" in text.split("guppyforge: 1")[0]  # the header says what to edit next
    assert "notes: |" in text and "&id" not in text
    assert not list(tmp_path.glob(".*.tmp"))  # the temp file was renamed into place


# --- Jinja escaping and example parsing -----------------------------------------------------

NASTY = ["{{ 7 * 7 }}", "{% for x in y %}{% endfor %}", "{# hidden #}", "{{{", "a {b} }} {",
         "{{ ''.__class__.__mro__ }}", "{%- raw -%}", "{{char}}", "{"]  # fmt: skip


@pytest.mark.parametrize("text", NASTY)
def test_escaped_text_renders_as_itself_and_is_accepted(text: str) -> None:
    escaped = escape_jinja(text)
    compile_text(escaped, {})  # the persona checker accepts it (raises TemplateProblem if not)
    assert environment().from_string(escaped).render() == text


def test_parse_examples_keeps_blocks_that_are_not_exchanges() -> None:
    text = (
        "<START>\n{{user}}: hi\nMochi: hey\nstill me\n{{char}}: and me\n"
        "<START>\n{{char}}: I speak first\n{{user}}: ok\n"
        "<START>\nUSER: yo\n<BOT>: sup"
    )
    examples, leftovers = parse_examples(text, {"{{char}}", "<bot>", "mochi"})
    assert examples == [
        {"turns": [{"user": "hi", "assistant": "hey\nstill me\nand me"}]},
        {"turns": [{"user": "yo", "assistant": "sup"}]},
    ]
    assert leftovers == ["{{char}}: I speak first\n{{user}}: ok"]


# --- errors: one line, no traceback ---------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"spec": "chara_card_v2",\n "data": {', "c.json:2:11: not valid JSON"),
        (b"[1, 2]", "not a Character Card"),
        (b'{"hello": "world"}', "not a Character Card"),
        (b'{"spec": "chara_card_v2", "data": "oops"}', "not a Character Card"),
        (b"\x89PNG\r\n\x1a\n....", "a truncated PNG"),
        (b'{"name": "\xc3\x28"}', "not UTF-8 JSON"),
    ],
)
def test_bad_card_is_one_line_error(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "c.json").write_bytes(content)
    with pytest.raises(GuppyError) as info:
        import_card(tmp_path / "c.json", tmp_path / "p.yaml")
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "p.yaml").exists()


def test_import_replaces_only_a_persona_of_the_same_name_and_only_with_force(tmp_path) -> None:
    out = tmp_path / "p.yaml"
    for mine in ("mine\n", "guppyforge: 1\nname: other\n", "name: biscuit\n"):  # not ours
        out.write_text(mine)
        for force in (False, True):
            with pytest.raises(GuppyError, match="not even with --force") as refusal:
                import_card(CARDS / "v1_card.json", out, force=force)
            assert "Pass --force" not in str(refusal.value)
        assert out.read_text() == mine
    out.write_text("guppyforge: 1\nname: biscuit\n")  # the signature: a persona of this name
    with pytest.raises(GuppyError, match="already exists. Pass --force"):
        import_card(CARDS / "v1_card.json", out)
    import_card(CARDS / "v1_card.json", out, force=True)
    assert load_persona(out).name == "biscuit"


def test_default_path_is_personas_slug_even_for_a_hostile_name(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    persona = {"guppyforge": 1, "name": "../../evil", "summary": "x", "topics": {}}
    data = {"name": "x", "extensions": {"guppyforge": {"format": 1, "persona": persona}}}
    (tmp_path / "c.json").write_text(json.dumps({"spec": "chara_card_v2", "data": data}))
    assert import_card("c.json") == Path("personas/evil.yaml")
    assert (tmp_path / "personas" / "evil.yaml").is_file()


def test_export_refuses_values_json_cannot_hold(tmp_path: Path) -> None:
    text = (CARDS / "persona.yaml").read_text(encoding="utf-8")
    (tmp_path / "p.yaml").write_text(text.replace("{colour: green", "{colour: .nan"))
    with pytest.raises(GuppyError, match="holds NaN or infinity"):
        export_card(tmp_path / "p.yaml", tmp_path / "c.json")
    assert not (tmp_path / "c.json").exists()


# --- the commands ---------------------------------------------------------------------------


def test_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    out, card_out = str(tmp_path / "b.yaml"), str(tmp_path / "b.json")
    result = runner.invoke(cli, ["import-card", str(CARDS / "v2_card.json"), "--out", out])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    result = runner.invoke(cli, ["import-card", str(CARDS / "v2_card.json"), "--out", out])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "error:" in result.output
    result = runner.invoke(cli, ["export-card", out, "--out", card_out])
    assert result.exit_code == 0, result.output
    assert json.loads(Path(card_out).read_text(encoding="utf-8"))["spec"] == "chara_card_v2"


def test_commands_do_not_import_torch_or_datasets(tmp_path: Path) -> None:
    card_path, persona, card_out = CARDS / "v3_card.json", tmp_path / "q.yaml", tmp_path / "q.json"
    code = f"""if True:
        import sys
        from click.testing import CliRunner
        from guppyforge.apps.cli import cli
        for args in (["import-card", {str(card_path)!r}, "--out", {str(persona)!r}],
                     ["export-card", {str(persona)!r}, "--out", {str(card_out)!r}]):
            assert CliRunner().invoke(cli, args).exit_code == 0, args
        heavy = {{"torch", "datasets"}} & set(sys.modules)
        assert not heavy, heavy
    """
    subprocess.run([sys.executable, "-c", code], check=True)
