"""`guppyforge chat` and the chat library: prompts that fit, streamed replies, the REPL."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from guppyforge.apps.chat import candidates
from guppyforge.apps.cli import cli
from guppyforge.model import engine as engine_module
from guppyforge.model.decode import decode_layout
from guppyforge.model.engine import Engine, build_prompt
from guppyforge.model.run import load_run
from guppyforge.model.sampling import decode_stream
from guppyforge.model.tokenizer import encode_prompt

HUNGRY = [{"role": "user", "content": "are you hungry"}]


@pytest.fixture(scope="module")
def run(micro_run):
    return load_run(micro_run)


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


def conversation(turns: int) -> list[dict]:
    messages = []
    for i in range(turns):
        messages.append({"role": "user", "content": f"do you like worms number {i}"})
        messages.append({"role": "assistant", "content": "worms? yes. always yes."})
    return messages + [{"role": "user", "content": "where do you sleep"}]


# --- replies -----------------------------------------------------------------------------------


def test_same_reply_twice_at_temperature_0(micro_run):
    first = invoke("chat", micro_run, "--prompt", "are you hungry", "--temperature", "0")
    second = invoke("chat", micro_run, "--prompt", "are you hungry", "--temperature", "0")
    assert first.exit_code == 0, first.output
    assert first.output == second.output
    assert first.output.strip()  # the trained micro model says something


def test_same_seed_same_sampled_reply(run):
    a = Engine.from_run(run).reply(HUNGRY, temperature=1.0, seed=7)
    b = Engine.from_run(run).reply(HUNGRY, temperature=1.0, seed=7)
    assert a == b


def test_streamed_pieces_join_to_the_full_reply(run):
    pieces = list(Engine.from_run(run).stream(HUNGRY, temperature=0.7, seed=3))
    assert len(pieces) > 1  # it really streams
    assert "".join(pieces) == Engine.from_run(run).reply(HUNGRY, temperature=0.7, seed=3)
    assert all(pieces)  # no empty pieces


def test_reply_stops_at_max_new_tokens(run):
    short = Engine.from_run(run).reply(HUNGRY, temperature=0, max_new_tokens=2)
    full = Engine.from_run(run).reply(HUNGRY, temperature=0)
    assert full.startswith(short) and len(short) < len(full)


def test_decoding_layout_changes_nothing_but_rounding_and_leaves_the_model_alone(micro_run):
    fresh = load_run(micro_run)
    decoded = decode_layout(fresh.model)
    ids = torch.tensor([encode_prompt(fresh.tokenizer, HUNGRY)])
    # Same weights, other summation order inside the matmul: equal up to float rounding.
    torch.testing.assert_close(decoded(ids), fresh.model(ids), rtol=1e-5, atol=1e-5)
    engine = Engine.from_run(fresh)
    assert all(p.is_contiguous() for p in fresh.model.parameters())  # a copy was re-laid
    assert engine.model is not fresh.model
    as_trained = Engine(fresh.model, fresh.tokenizer, prepare=False)
    assert as_trained.model is fresh.model
    assert as_trained.reply(HUNGRY, temperature=0) == engine.reply(HUNGRY, temperature=0)


# --- UTF-8 -------------------------------------------------------------------------------------


def test_streaming_never_splits_a_character(micro_run, monkeypatch):
    run = load_run(micro_run)
    text = "fish 🐟, 魚 and café"
    ids = run.tokenizer.encode(text, add_special_tokens=False).ids
    # The micro tokenizer never saw these characters: each is several byte tokens.
    assert any("\ufffd" in run.tokenizer.decode(ids[:n]) for n in range(1, len(ids)))
    engine = Engine.from_run(run)
    written = iter([*ids, engine.end_id])  # the model "writes" exactly these bytes, then ends
    monkeypatch.setattr(engine_module, "sample_next", lambda *args: next(written))
    pieces = list(engine.stream(HUNGRY, temperature=0.7))
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_a_character_cut_off_at_the_end_still_shows_its_bytes(run):
    ids = run.tokenizer.encode("ok 🐟", add_special_tokens=False).ids
    pieces = list(decode_stream(run.tokenizer, ids[:-1]))
    assert "".join(pieces).startswith("ok") and pieces[-1].endswith("\ufffd")


# --- prompts that fit --------------------------------------------------------------------------


def test_build_prompt_keeps_everything_that_fits(run):
    messages = conversation(1)
    ids, dropped = build_prompt(run.tokenizer, messages, context=128, max_new_tokens=16)
    assert dropped == 0
    assert ids == encode_prompt(run.tokenizer, messages)


def test_build_prompt_drops_old_turns_and_says_how_many(run):
    messages = conversation(10)
    ids, dropped = build_prompt(run.tokenizer, messages, context=128, max_new_tokens=64)
    assert 0 < dropped < len(messages) - 1
    assert len(ids) <= 128 - 64
    kept = messages[dropped:]
    assert kept[0]["role"] == "user"  # never a reply without its question
    assert ids == encode_prompt(run.tokenizer, kept)
    # As many as fit: one more turn would not have.
    longer = encode_prompt(run.tokenizer, messages[dropped - 2 :])
    assert len(longer) > 128 - 64


def test_build_prompt_cuts_a_too_long_message_from_the_left(run):
    words = " ".join(f"w{i}" for i in range(200))
    messages = conversation(2)[:-1] + [{"role": "user", "content": words}]
    ids, dropped = build_prompt(run.tokenizer, messages, context=128, max_new_tokens=64)
    assert dropped == len(messages) - 1
    assert len(ids) <= 64
    text = run.tokenizer.decode(ids, skip_special_tokens=False)
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")
    assert "w199<|im_end|>" in text and "w0 " not in text


# --- --show-probs ------------------------------------------------------------------------------


def test_show_probs_tables_hold_sensible_probabilities(micro_run):
    result = invoke(
        "chat", micro_run, "--prompt", "hello", "--show-probs",
        "--temperature", "0.5", "--seed", "0", "--max-new-tokens", "6",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    tables = result.output.split("  next token ")[1:]
    assert len(tables) == 6
    for table in tables:
        rows = re.findall(r"^\s+([0-9.]+)\s+([0-9.]+)\s+'.*'(  <- picked)?$", table, re.M)
        assert len(rows) >= 5
        before = [float(r[0]) for r in rows[:5]]
        after = [float(r[1]) for r in rows[:5]]
        assert before == sorted(before, reverse=True)
        assert all(0 <= p <= 1 for p in before + after)
        assert sum(before) <= 1.005 and sum(after) <= 1.005
        # Temperature below 1 sharpens: the top candidates gain probability.
        assert sum(after) >= sum(before) - 0.005
        assert sum(1 for r in rows if r[2]) == 1  # exactly one picked token


def test_candidates_reshape_with_temperature():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -2.0, -3.0])
    same = candidates(logits, 1.0)
    assert all(abs(p - q) < 1e-6 for _, p, q in same)
    hot = candidates(logits, 2.0)
    assert hot[0][2] < hot[0][1]  # above 1: flatter, the favourite loses probability
    greedy = candidates(logits, 0)
    assert [q for _, _, q in greedy] == [1.0, 0.0, 0.0, 0.0, 0.0]


# --- the REPL ----------------------------------------------------------------------------------


def test_repl_greets_resets_drops_and_quits(micro_run):
    lines = [f"do you like worms, bugs and flakes, number {i}" for i in range(5)]
    session = "\n".join(lines + ["/reset", "hello", "/quit", "never read"]) + "\n"
    result = invoke("chat", micro_run, "--temperature", "0", input=session)
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("Chatting with finn") and "/reset" in out and "/quit" in out
    assert "no longer fit in 128 tokens" in out
    assert "a fresh conversation" in out
    assert out.count("finn> ") == 6
    assert out.rstrip().endswith("bye")


def test_repl_ends_cleanly_at_end_of_input(micro_run):
    result = invoke("chat", micro_run, "--temperature", "0", input="hello\n")
    assert result.exit_code == 0 and result.output.rstrip().endswith("bye")


# --- errors ------------------------------------------------------------------------------------


def test_missing_run_folder_is_one_line(tmp_path):
    result = invoke("chat", tmp_path / "nope", "--prompt", "hi")
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and result.output.startswith("error: ")
    assert "nope" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    "name, content",
    [
        ("config.json", b"{not json"),
        ("model.safetensors", b"not weights"),
        ("tokenizer.json", b"["),
    ],
)
def test_corrupt_run_folder_is_one_line(micro_run, tmp_path, name, content):
    broken = tmp_path / "run"
    shutil.copytree(micro_run, broken)
    (broken / name).write_bytes(content)
    result = invoke("chat", broken, "--prompt", "hi")
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1 and result.output.startswith(f"error: {broken / name}")


def test_missing_config_file_names_it(tmp_path):
    (Path(tmp_path) / "run").mkdir()
    result = invoke("chat", tmp_path / "run", "--prompt", "hi")
    assert result.exit_code == 1 and "config.json: missing" in result.output
