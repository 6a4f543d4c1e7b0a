"""The character on what nobody wrote down: user-side variation, the leak-free split by user
message, and off-topic prompts from the shipped pool answered in character."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
from click.testing import CliRunner

from guppyforge.apps.cli import cli
from guppyforge.dataset.draw import draw_unique, turn_mix
from guppyforge.dataset.split import RowKeys, message_keys, split_by_prompt
from guppyforge.errors import GuppyError
from guppyforge.files import builtin_persona
from guppyforge.persona.conversations import OFFTOPIC, Sampler, pool
from guppyforge.persona.schema import load_persona
from guppyforge.persona.types import Variation
from guppyforge.persona.variation import Rng, Varier, normalise

SMALL = """\
guppyforge: {version}
name: pip
summary: A test fish.
style: {{case: lower}}
grammar:
  food: [worms, flakes, bugs, shrimp, peas]
topics:
  food:
    ask: ["do you like {{{{ food }}}}", "what is your favourite food", "i do not like {{{{ food }}}}"]
    say: ["{{{{ food }}}}? yes.", "i eat {{{{ pick('food') }}}}.", "yes. always."]
{extra}"""


def small(write_persona_file, version="1.2", extra=""):
    return write_persona_file(SMALL.format(version=version, extra=extra))


@pytest.fixture(scope="session")
def guppy_60k():
    """60,000 multi-turn guppy rows as generate draws them (drawn once for every test here)."""
    persona = load_persona(builtin_persona("guppy"))
    draw = draw_unique(builtin_persona("guppy"), persona, 7, 60_000, turn_mix(None, persona),
                       progress=False)  # fmt: skip
    return persona, draw


# --- variation ---------------------------------------------------------------------------------


def test_variation_is_deterministic_and_never_touches_a_reply():
    persona = load_persona(builtin_persona("guppy"))
    sampler, varier = Sampler(persona, 3), Varier(persona, 3)
    changed = 0
    for i in range(300):
        c = sampler.conversation(i, turns=2)
        first, did = varier.messages(c.messages, i)
        again, _ = Varier(persona, 3).messages(c.messages, i)
        assert first == again
        assert [m for m in first if m["role"] == "assistant"] == [
            m for m in c.messages if m["role"] == "assistant"
        ]
        changed += did
    assert 100 < changed < 250  # share 0.5 per user message, two of them


def test_normalise_undoes_every_change_but_typos():
    persona = load_persona(builtin_persona("guppy"))
    # What normalise cannot undo: typos, other phrasings, a dropped helper verb (the split
    # compares each message's unvaried form for those).
    kept = Variation(share=1.0, typo=0.0, paraphrase=0.0, drop=0.0)
    no_typos = dataclasses.replace(persona, variation=kept)
    sampler, varier = Sampler(persona, 0), Varier(no_typos, 0)
    names = (persona.name, persona.display_name)
    for i in range(500):
        text = sampler.conversation(i).messages[0]["content"]
        varied = varier.text(text, Rng(0, i))
        assert normalise(varied, names) == normalise(text, names), (text, varied)


def test_normalise_examples():
    assert normalise("Hey guppy, what's up?! lol", ("guppy",)) == "what is up"
    assert normalise("quick question: dont you like worms, guppy?", ("guppy",)) == (
        "do not you like worms"
    )
    assert normalise("hi!") == "hi"  # all filler: kept, not an empty key


def test_normalise_reads_text_speak_stretched_words_and_hearts():
    names = ("marmalade",)
    assert normalise("whats ur name", names) == normalise("What's your name?", names)
    assert normalise("r u ok", names) == normalise("are you okay", names)
    assert normalise("wat u doin rn", names) == "what are you doing right now"
    assert normalise("idk lol") == normalise("I don't know.")
    assert normalise("heyyy marmalade, do u like tuna?? <3", names) == "do you like tuna"
    assert normalise("do you like tuna :)") == normalise("do you like tuna <3")
    assert normalise("sooo hungryyy") == normalise("so hungry")
    assert normalise("thx") == normalise("thank you")


def varied_forms(text: str, variation: Variation, persona=None, tries: int = 300) -> set[str]:
    persona = persona or load_persona(builtin_persona("cat"))
    varier = Varier(dataclasses.replace(persona, variation=variation), 0)
    return {varier.text(text, Rng(0, i)) for i in range(tries)}


def test_text_speak_dropped_words_and_runs_are_how_people_type():
    only = dict.fromkeys(("case", "punctuation", "typo", "filler", "name", "contraction"), 0.0)
    speak = varied_forms("are you going to eat your dinner tomorrow?",
                         Variation(share=1.0, **only, paraphrase=0, drop=0, runs=0, textspeak=1))  # fmt: skip
    words = {w for text in speak for w in text.replace("?", "").split()}
    assert {"u", "r", "ur", "gonna", "tmrw"} <= words, speak
    shop = varied_forms("i am going to the shop", Variation(share=1.0, **only, paraphrase=0,
                        drop=0, runs=0, textspeak=1))  # fmt: skip
    assert not any("gonna the" in text for text in shop)  # "going to" shortens before a verb only
    dropped = varied_forms("are you ok", Variation(share=1.0, **only, paraphrase=0, textspeak=0,
                           runs=0, drop=1))  # fmt: skip
    assert dropped == {"you ok"}
    runs = varied_forms("hey how are you", Variation(share=1.0, **only, paraphrase=0, textspeak=0,
                        drop=0, runs=1))  # fmt: skip
    assert any("heyy" in text for text in runs) and all("hey" in text for text in runs)


def test_contractions_stay_english():
    only = Variation(share=1.0, case=0, punctuation=0, typo=0, filler=0, name=0, contraction=1,
                     paraphrase=0, textspeak=0, drop=0, runs=0)  # fmt: skip
    for text, never in [
        ("what don't you like", "do not you"),
        ("why don't you like the teapot", "do not you"),
        ("do you have a family", "you've"),
        ("can you have too much water", "you've"),
        ("i have to clean my room", "i've"),
        ("that's what you are", "you're"),
    ]:
        forms = varied_forms(text, only, tries=60)
        assert not any(never in f.lower() for f in forms), (text, forms)
    assert "i've been here all day" in varied_forms("i have been here all day", only, tries=60)


def test_paraphrase_puts_a_question_the_other_usual_ways_and_keeps_its_value():
    only = Variation(share=1.0, case=0, punctuation=0, typo=0, filler=0, name=0, contraction=0,
                     paraphrase=1, textspeak=0, drop=0, runs=0)  # fmt: skip
    liked = varied_forms("do you like tuna?", only)
    assert {"are you into tuna?", "thoughts on tuna?", "how do you feel about tuna?"} <= liked
    assert all("tuna" in text for text in liked)  # the value the reply may echo is kept
    named = varied_forms("hey, what's your name", only)
    assert {"hey, who are you", "hey, what do i call you"} <= named
    # A clause is no `{x}`, and a message no frame fits stays as written.
    assert varied_forms("do you like to swim", only) == {"do you like to swim"}
    assert varied_forms("the heater broke", only) == {"the heater broke"}


def test_variation_kinds_of_1_4_need_format_1_4(write_persona_file):
    with pytest.raises(GuppyError, match=r"variation\.textspeak` needs persona format 1.4"):
        load_persona(small(write_persona_file, extra="variation: {textspeak: 0.5}\n"))
    tuned = load_persona(small(write_persona_file, version="1.4",
                               extra="variation: {textspeak: 0.5, paraphrase: 0}\n"))  # fmt: skip
    assert tuned.variation == Variation(textspeak=0.5, paraphrase=0.0)


def test_variation_off_and_tuned_in_the_file(write_persona_file):
    off = load_persona(small(write_persona_file, extra="variation: off\n"))
    assert off.variation.share == 0
    c = Sampler(off, 0).conversation(0)
    assert Varier(off, 0).messages(c.messages, 0) == (c.messages, False)
    tuned = load_persona(small(write_persona_file, extra="variation: {share: 0.9, typo: 0}\n"))
    assert tuned.variation == Variation(share=0.9, typo=0.0)
    assert load_persona(small(write_persona_file)).variation == Variation()  # on by default


def test_new_keys_need_format_1_2_and_old_files_still_load(write_persona_file):
    old = load_persona(small(write_persona_file, version="1.1"))
    assert old.spec == (1, 1) and old.variation.share > 0 and old.offtopic is None
    with pytest.raises(GuppyError, match=r"p\.yaml:\d+:\d+: variation: .*needs persona format 1.2"):
        load_persona(small(write_persona_file, version="1.1", extra="variation: off\n"))
    bad = "variation: {typo: 2}\n"
    with pytest.raises(GuppyError, match=r"variation\.typo: must be a number from 0 to 1"):
        load_persona(small(write_persona_file, extra=bad))


# --- the split ---------------------------------------------------------------------------------


def _guppy_split(guppy_60k, strata: bool):
    persona, draw = guppy_60k
    names = (persona.name, persona.display_name)
    keys = [message_keys(r[0], u, names) for r, u in zip(draw.rows, draw.unvaried, strict=True)]
    topics = [r[1] for r in draw.rows] if strata else None
    return split_by_prompt(keys, 0.05, 7, topics)


def _forms(persona, draw, i, turns=slice(None)):
    """Row i's user messages (`turns` of them) as generated, as written, and both normalised."""
    names = (persona.name, persona.display_name)
    users = [text for role, text in draw.rows[i][0] if role == "user"][turns]
    raw = users + list(draw.unvaried[i] or ())[turns]
    return set(raw) | {normalise(u, names) for u in raw}


@pytest.mark.parametrize("strata", [False, True], ids=["as-generate-calls-it", "by-topic"])
def test_no_test_rows_opening_nor_its_unvaried_form_is_in_train(guppy_60k, strata):
    persona, draw = guppy_60k
    assert len(draw.rows) == 60_000 and len({row[0] for row in draw.rows}) == 60_000
    assert draw.varied > 20_000 and max(row[3] for row in draw.rows) == 3
    train, test = _guppy_split(guppy_60k, strata)
    assert len(test) == 3_000
    in_train = set().union(*(_forms(persona, draw, i) for i in train))
    assert not any(_forms(persona, draw, i, slice(1)) & in_train for i in test)
    # A later turn of a test row that opens any row is a topic message there: not in train either.
    openings = set().union(*(_forms(persona, draw, i, slice(1)) for i in range(len(draw.rows))))
    assert not any(_forms(persona, draw, i) & openings & in_train for i in test)


def test_test_split_has_multi_turn_rows_and_every_topic(guppy_60k):
    persona, draw = guppy_60k
    train, test = _guppy_split(guppy_60k, strata=True)
    assert sum(draw.rows[i][3] > 1 for i in test) > 500  # follow-ups no longer pin rows in train
    rows = Counter(r[1] for r in draw.rows)
    held = Counter(draw.rows[i][1] for i in test)
    assert set(held) == set(rows) == {*persona.topics, OFFTOPIC}
    for topic, n in rows.items():  # each topic about its own share of the test split
        assert abs(held[topic] / len(test) - n / len(draw.rows)) < 0.02, topic


def test_split_joins_rows_that_share_any_message():
    keys = [("a", "b"), ("c",), ("b", "d"), ("e",), ("f",), ("g",), ("h",), ("i",), ("j",), ("k",)]
    for seed in range(20):
        train, test = split_by_prompt(keys, 0.3, seed)
        assert {0, 2} <= set(train) or {0, 2} <= set(test)


def test_a_generic_follow_up_joins_no_rows_but_an_opening_does():
    def row(opening, reply):
        return [("user", opening), ("assistant", reply), ("user", "why?"), ("assistant", "food.")]

    keys = [message_keys(row("do you like worms", "yes."))]
    keys += [message_keys(row(f"question {n}", "ok.")) for n in range(9)]
    assert keys[0] == RowKeys(("do you like worms",), ("why",))
    assert len({tuple(split_by_prompt(keys, 0.3, seed)[1]) for seed in range(20)}) > 1
    # Once "why?" opens a row it is a topic message: every row asking it goes to one side.
    keys.append(message_keys([("user", "Why?"), ("assistant", "bubbles.")]))
    keys += [message_keys([("user", f"other {n}"), ("assistant", "ok.")]) for n in range(20)]
    for seed in range(20):
        train, test = split_by_prompt(keys, 0.3, seed)
        assert set(range(11)) <= set(train) or set(range(11)) <= set(test)


def test_strata_give_each_a_test_row_and_must_match_the_rows():
    keys = [f"a{n}" for n in range(90)] + ["b", "b", "c"]
    strata = ["a"] * 90 + ["b", "b", "c"]
    for seed in range(10):
        _, test = split_by_prompt(keys, 0.1, seed, strata)
        assert {strata[i] for i in test} == {"a", "b", "c"} and len(test) == 9
    with pytest.raises(ValueError, match="2 strata for 93 rows"):
        split_by_prompt(keys, 0.1, 0, ["a", "b"])


# --- off-topic ---------------------------------------------------------------------------------


def test_the_pool_ships_in_two_disjoint_parts():
    train, heldout = pool("train"), pool("heldout")
    assert len(train) >= 260 and len(heldout) >= 80
    assert not {normalise(p) for p in train} & {normalise(p) for p in heldout}


def test_every_builtin_and_the_starter_deflect(tmp_path):
    from guppyforge.persona.starter import write_persona

    paths = [builtin_persona(n) for n in ("guppy", "cat", "lighthouse")]
    paths.append(write_persona("pip", None, tmp_path))
    for path in paths:
        p = load_persona(path)
        assert p.offtopic is not None and 0 < p.offtopic.share <= 0.2, path
        assert len(p.offtopic.say) >= 3, path


def test_offtopic_rows_are_unique_counted_and_from_the_train_part_only(guppy_60k):
    persona, draw = guppy_60k
    rows = [(r, u) for r, u in zip(draw.rows, draw.unvaried, strict=True) if r[1] == OFFTOPIC]
    share = len(rows) / len(draw.rows)
    assert abs(share - persona.offtopic.share) < 0.01
    written = {(u or (r[0][0][1],))[0] for r, u in rows}
    assert written <= set(pool("train")) and len(written) > 200
    assert not written & set(pool("heldout"))
    sampler = Sampler(persona, 7)
    for r, _ in rows[:200]:  # in character: styled, never a banned phrase
        reply = r[0][1][1]
        assert reply == sampler.style(reply) and not sampler.banned(reply)


def test_generate_counts_varied_and_offtopic_rows_in_stats_and_card(write_persona_file, tmp_path):
    from guppyforge.dataset.generate import generate_dataset

    extra = (
        'offtopic: {share: 0.2, say: ["what? i only know {{ food }}.", "no idea. {{ food }}?"]}\n'
    )
    result = generate_dataset(small(write_persona_file, extra=extra), tmp_path / "d", n=300,
                              seed=1, progress=False)  # fmt: skip
    assert result.stats["varied_rows"] > 50 and result.stats["offtopic_rows"] > 30
    card = (tmp_path / "d" / "README.md").read_text()
    assert f"| rows with a varied user side | {result.stats['varied_rows']:,} |" in card
    assert f"| off-topic rows (shipped pool) | {result.stats['offtopic_rows']:,} |" in card


def test_offtopic_template_errors_point_at_their_line(write_persona_file):
    extra = 'offtopic:\n  say: ["i like {{ fod }}"]\n'
    with pytest.raises(GuppyError, match=r"p\.yaml:12:9: offtopic\.say\[0\]: .*fod"):
        load_persona(small(write_persona_file, extra=extra))


def test_preview_shows_the_varied_message_and_what_was_written():
    out = CliRunner().invoke(cli, ["preview", str(builtin_persona("guppy")), "-n", "12"])
    assert out.exit_code == 0, out.output
    assert "(written: " in out.output and "# offtopic:" in out.output
