"""The engine's batches: replies decoded together equal the same replies one at a time."""

from __future__ import annotations

from pathlib import Path

import pytest

from guppyforge.errors import GuppyError
from guppyforge.model.engine import BatchDecoder, Busy, Engine
from guppyforge.model.run import load_run

PROMPTS = ["are you hungry", "hello", "where do you sleep", "do you like bugs", "hi"]


@pytest.fixture(scope="module")
def engine(micro_run):
    return Engine.from_run(load_run(Path(micro_run)))


def conversation(prompt: str, turns: int = 1) -> list[dict]:
    """Prompts of different lengths: `turns` earlier exchanges before the question."""
    messages = []
    for i in range(turns - 1):
        messages += [{"role": "user", "content": f"do you like worms {i}"}]
        messages += [{"role": "assistant", "content": "worms? yes. always yes."}]
    return messages + [{"role": "user", "content": prompt}]


def decode_all(decoder: BatchDecoder, engine: Engine, jobs: list[tuple[list[dict], dict]]):
    """Submit every job, step until all ended; (text, row) per job."""
    texts = [[] for _ in jobs]
    rows = []
    for i, (messages, options) in enumerate(jobs):
        ids, _ = engine.prompt(messages, options.get("max_new_tokens", 64))
        rows.append(
            decoder.submit(ids, lambda p, i=i: p is not None and texts[i].append(p), **options)
        )
    while not all(r.done for r in rows):
        decoder.step()
    return ["".join(t) for t in texts], rows


def test_concurrent_greedy_replies_equal_the_engines_one_at_a_time(engine):
    jobs = [(conversation(p, turns=1 + i % 3), {"temperature": 0}) for i, p in enumerate(PROMPTS)]
    steps = []
    decoder = BatchDecoder(engine)
    decoder.on_step = lambda rows: steps.append(len(rows))
    texts, rows = decode_all(decoder, engine, jobs)
    for (messages, _), text, row in zip(jobs, texts, rows, strict=True):
        completion = engine.stream(messages, temperature=0)
        assert text == completion.text() and text
        assert row.finish_reason == completion.finish_reason
        assert row.completion_tokens == completion.completion_tokens
        assert row.prompt_tokens == completion.prompt_tokens
    assert max(steps) == len(jobs)  # all five decoded in the same forward passes


def test_rows_join_and_leave_between_steps(engine):
    decoder = BatchDecoder(engine, max_rows=2)
    jobs = [
        (conversation(p), {"temperature": 0, "max_new_tokens": 3 + i})
        for i, p in enumerate(PROMPTS)
    ]
    texts, rows = decode_all(decoder, engine, jobs)
    for (messages, options), text, row in zip(jobs, texts, rows, strict=True):
        completion = engine.stream(messages, **options)
        assert text == completion.text()
        assert (row.finish_reason, row.completion_tokens) == (
            completion.finish_reason,
            completion.completion_tokens,
        )
    assert [r.finish_reason for r in rows[:3]] == ["length"] * 3  # cut mid-reply, freeing a row


def test_seeded_sampling_and_stop_strings_follow_the_engines_rules(engine):
    full = engine.reply(conversation("are you hungry"), temperature=0)
    stop = full.split()[1]
    jobs = [
        (conversation("are you hungry"), {"temperature": 0, "stop": [stop]}),
        (conversation("hello"), {"temperature": 1.0, "top_p": 0.9, "seed": 7}),
        (conversation("hi"), {"temperature": 0.8, "top_k": 5, "seed": 3}),
    ]
    texts, rows = decode_all(BatchDecoder(engine), engine, jobs)
    assert texts[0] == full[: full.index(stop)] and rows[0].finish_reason == "stop"
    assert texts[1] == engine.reply(jobs[1][0], **jobs[1][1])
    assert texts[2] == engine.reply(jobs[2][0], **jobs[2][1])


def test_a_cancelled_row_frees_its_slot_at_the_next_step(engine):
    decoder = BatchDecoder(engine, max_rows=1)
    ended = []
    first = decoder.submit(engine.prompt(conversation("hello"))[0], ended.append, temperature=0)
    decoder.step()
    assert decoder.active == 1 and not first.done
    decoder.cancel(first)
    texts, rows = decode_all(decoder, engine, [(conversation("hi"), {"temperature": 0})])
    assert first.done and ended[-1] is None
    assert texts[0] == engine.reply(conversation("hi"), temperature=0)


def test_too_many_waiting_is_refused(engine):
    decoder = BatchDecoder(engine, max_rows=1, max_waiting=1)
    decoder.submit([1, 2, 3], lambda p: None)
    with pytest.raises(Busy):
        decoder.submit([1, 2, 3], lambda p: None)


def test_replies_decoded_together_equal_one_at_a_time(engine):
    chats = [conversation(p, turns=1 + i % 2) for i, p in enumerate(PROMPTS)]
    together = engine.replies(chats, temperature=0)
    assert together == [engine.reply(c, temperature=0) for c in chats] and all(together)


def test_every_path_refuses_bad_sampling_options(engine):
    with pytest.raises(GuppyError, match="top_p"):
        BatchDecoder(engine).submit([1, 2, 3], lambda p: None, top_p=0.0)
    with pytest.raises(GuppyError, match="temperature"):
        engine.replies([conversation("hi")], temperature=float("nan"))


def test_a_reply_of_no_tokens_runs_nothing(engine):
    completion = engine.stream(conversation("hi"), temperature=0, max_new_tokens=0)
    assert completion.text() == "" and completion.finish_reason == "length"
    assert completion.completion_tokens == 0
