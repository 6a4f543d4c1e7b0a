"""Sampling conversations: determinism, bound values, shuffle bags, style rules, follow-ups."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from guppyforge.errors import GuppyError
from guppyforge.persona.bounds import MAX_GRAMMAR_DEPTH
from guppyforge.persona.conversations import Sampler
from guppyforge.persona.schema import load_persona


def sampler_for(write, body: str, seed: int = 0) -> Sampler:
    """A Sampler for a persona made of the standard header plus `body` (grammar and topics)."""
    return Sampler(load_persona(write("guppyforge: 1\nname: t\nsummary: s\n" + body)), seed)


def texts(conversation) -> list[str]:
    return [m["content"] for m in conversation.messages]


def test_same_seed_and_index_give_the_same_conversation(mochi_file):
    persona = load_persona(mochi_file)
    a, b = Sampler(persona, seed=7), Sampler(persona, seed=7)
    forwards = [a.conversation(i, turns=2) for i in range(50)]
    backwards = [b.conversation(i, turns=2) for i in reversed(range(50))][::-1]
    assert forwards == backwards  # a conversation depends on its index, not on call order
    assert [texts(c) for c in forwards] != [
        texts(Sampler(persona, 8).conversation(i, 2)) for i in range(50)
    ]


def test_conversations_are_the_same_in_another_process(mochi_file):
    code = (
        "from guppyforge.persona.schema import load_persona; from guppyforge.persona.conversations import Sampler;"
        f"print(Sampler(load_persona({str(mochi_file)!r}), 5).conversation(123, 2).messages)"
    )
    env = {"PYTHONHASHSEED": "12345", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    here = Sampler(load_persona(mochi_file), 5).conversation(123, 2).messages
    assert out.stdout.strip() == str(here)


def test_a_value_picked_in_the_question_is_reused_in_answer_and_follow_ups(mochi_file):
    sampler = Sampler(load_persona(mochi_file))
    for i in range(60):
        c = sampler.conversation(i, turns=3, topic="food")
        ask, say, ask2, say2 = texts(c)
        if ask.startswith("do you want some "):
            food = ask.removeprefix("do you want some ")
            assert say.startswith(food + "?") or say in (
                f"i only eat {food}.",
                "always. feed me now.",
            )
        else:  # format 1.1: a reply that echoes a food never answers a question naming none
            assert say == "always. feed me now."
        food = ask2.removeprefix("and after the ").removesuffix("?")
        assert say2.endswith(f"the {food} made me sleepy.")
        # One follow-up: a third turn could only repeat it, and no line repeats in a conversation.
        assert c.turns == 2 and c.template_id.count("/f0:") == 1


def test_template_id_traces_yaml_lines_and_topics_without_follow_ups_stay_single(mochi_file):
    persona = load_persona(mochi_file)
    sampler = Sampler(persona)
    food = persona.topics["food"]
    ids = {sampler.conversation(i, turns=2, topic="food").template_id for i in range(20)}
    follow = f"/f0:ask0@L{food.follow_ups[0].ask[0].line}/say0@L{food.follow_ups[0].say[0].line}"
    assert ids == {  # "are you hungry" (ask 0) names no food: only say 2 answers it
        f"food/ask{a}@L{food.ask[a].line}/say{s}@L{food.say[s].line}{follow}"
        for a, s in ((0, 2), (1, 0), (1, 1), (1, 2))
    }
    hello = sampler.conversation(0, turns=4, topic="hello")
    assert hello.turns == 1 and len(hello.messages) == 2 and hello.template_id.count("/") == 2
    lines = mochi_file.read_text().splitlines()
    (example,) = sampler.examples()
    line = int(example.template_id.split("@L")[1])
    assert example.template_id.startswith("examples/0@L") and "topic: food" in lines[line - 1]
    assert texts(example) == ["what do you like", "tuna. mostly tuna."]
    with pytest.raises(GuppyError, match="no topic 'nope'"):
        sampler.conversation(0, topic="nope")


def test_shuffle_bag_never_repeats_within_a_conversation(write_persona_file):
    sampler = sampler_for(
        write_persona_file,
        "grammar:\n  c: [red, green, blue]\ntopics:\n  t:\n"
        "    ask: [\"{{ c }} {{ pick('c') }} {{ pick('c') }}\"]\n    say: [ok]\n",
    )
    for i in range(200):
        words = texts(sampler.conversation(i))[0].split()
        assert sorted(words) == ["blue", "green", "red"]


def test_picks_are_even_across_conversations_and_follow_weights(write_persona_file):
    sampler = sampler_for(
        write_persona_file,
        "grammar:\n  x: [a, b, c, {text: d, weight: 3}]\ntopics:\n  t:\n    ask: ['{{ x }}']\n"
        "    say: [ok]\n",
    )
    counts = Counter(texts(sampler.conversation(i))[0] for i in range(600))
    expected = {"a": 100, "b": 100, "c": 100, "d": 300}
    # Quasi-random first draws: within 2 of the exact share (independent draws: about +-10).
    assert all(abs(counts[k] - n) <= 2 for k, n in expected.items()), counts


def test_topics_follow_their_weights(write_persona_file):
    sampler = sampler_for(
        write_persona_file,
        "topics:\n  big:\n    weight: 3\n    ask: [a]\n    say: [b]\n  small:\n    ask: [c]\n"
        "    say: [d]\n",
    )
    counts = Counter(sampler.conversation(i).topic for i in range(4000))
    assert counts == {"big": 3000, "small": 1000}


def test_style_case_sentences_and_never_say(write_persona_file):
    sampler = sampler_for(
        write_persona_file,
        "style: {case: upper, max_sentences: 2, never_say: [As An AI]}\n"
        "topics:\n  t:\n    ask: [Hi There]\n"
        "    say: ['One. Two! Three? Four.', 'as an ai, i cannot.']\n",
    )
    for i in range(20):
        user, reply = texts(sampler.conversation(i))
        assert user == "Hi There" and reply == "ONE. TWO!"  # the never_say reply is redrawn


def test_never_say_that_cannot_be_avoided_is_a_clear_error(write_persona_file):
    sampler = sampler_for(
        write_persona_file,
        "style: {never_say: [banana]}\ntopics:\n  t:\n    ask: [hi]\n    say: [banana time]\n",
    )
    with pytest.raises(
        GuppyError, match=r"p\.yaml:8:\d+: topics\.t\.say\[0\]: 20 replies in a row"
    ):
        sampler.conversation(0)


def test_jinja_templates_with_logic_share_the_bound_values(write_persona_file):
    sampler = sampler_for(
        write_persona_file,
        "grammar:\n  food: [tuna, kibble]\ntopics:\n  t:\n    ask: ['want {{ food }}?']\n"
        "    say: [\"{% if food == 'tuna' %}TUNA!{% else %}{{ food | default('x') | upper }}.{% endif %}\"]\n",
    )
    for i in range(10):
        ask, say = texts(sampler.conversation(i))
        assert say == ("TUNA!" if ask == "want tuna?" else "KIBBLE.")


def test_recursive_grammar_stays_within_the_depth_limit(write_persona_file):
    # 15 ways to go on, one unlikely way to stop: only the depth limit ends most lists.
    alternatives = ", ".join(f"'w{i} {{{{ list }}}}'" for i in range(15))
    sampler = sampler_for(
        write_persona_file,
        f"grammar:\n  list: [{alternatives}, {{text: end, weight: 0.0001}}]\n"
        "topics:\n  t:\n    ask: ['{{ list }}']\n    say: [ok]\n",
    )
    for i in range(50):
        words = texts(sampler.conversation(i))[0].split()
        assert len(words) == MAX_GRAMMAR_DEPTH and words[-1] == "end"
        assert len(set(words)) == len(words)  # the shuffle bag: no way to go on is reused


@pytest.mark.parametrize(
    "body, ask, reply",
    [
        (
            "style: {max_sentences: 2}\ngrammar:\n  食べ物: [まぐろ, かつお]\n  場所: [窓辺, ソファ]\n"
            "topics:\n  ごはん:\n    ask: ['{{ 食べ物 }}は好き？']\n"
            "    say: ['{{ 食べ物 }}！大好き。{{ 場所 }}で食べる。もう寝る。']\n",
            r"^(まぐろ|かつお)は好き？$",
            r"^(まぐろ|かつお)！大好き。$",
        ),
        (
            "style: {case: lower, never_say: [ИИ]}\ngrammar:\n  еда: [Рыба, Мышь]\n"
            "topics:\n  еда:\n    ask: ['Ты любишь {{ еда | lower }}?', 'ии?']\n"
            "    say: ['{{ еда }}? Да. ВСЕГДА.', 'Я ИИ.']\n",
            r"^(Ты любишь (рыба|мышь)\?|ии\?)$",
            r"^(рыба|мышь)\? да\. всегда\.$",
        ),
    ],
)
def test_non_latin_personas_validate_and_generate(write_persona_file, body, ask, reply):
    from guppyforge.persona.schema import validate_persona

    path = write_persona_file("guppyforge: 1\nname: t\nsummary: s\n" + body)
    assert validate_persona(path, target=1).errors == []
    sampler = Sampler(load_persona(path), 1)
    for i in range(20):
        user, answer = texts(sampler.conversation(i))
        assert __import__("re").match(ask, user) and __import__("re").match(reply, answer), (
            user,
            answer,
        )
        if "好き" in user:
            assert answer.startswith(user[: user.index("は")])  # the bound value is reused
