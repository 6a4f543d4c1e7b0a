"""The reference: the engine's greedy replies equal `GPT.generate`'s, token for token.

`GPT.generate` runs the whole sequence again for every token, with no cache. The engine fills a
KV cache once per prompt (prefill), then decodes one token per step (`DecodeStep`), many rows at
once under a mask where their lengths differ. Greedy decoding leaves nothing to chance, so
whichever of those paths a reply takes, its tokens must be the reference's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from guppyforge.model.engine import BatchDecoder, Engine
from guppyforge.model.run import load_run

PROMPTS = ["are you hungry", "hello", "where do you sleep", "do you like bugs", "hi"]
BUDGET = 40  # tokens a reply may have


@pytest.fixture(scope="module")
def run(micro_run):
    return load_run(Path(micro_run))


@pytest.fixture(scope="module")
def engine(run):
    return Engine.from_run(run)


def prompt_ids(engine: Engine, prompt: str, turns: int) -> list[int]:
    """The ChatML prompt the engine builds; `turns` - 1 earlier exchanges make lengths differ."""
    messages = []
    for i in range(turns - 1):
        messages += [{"role": "user", "content": f"do you like worms {i}"}]
        messages += [{"role": "assistant", "content": "worms? yes. always yes."}]
    ids, _ = engine.prompt(messages + [{"role": "user", "content": prompt}], BUDGET)
    return ids


def reference(run, engine: Engine, ids: list[int]) -> list[int]:
    """`GPT.generate`'s greedy continuation, up to the token that closes a reply."""
    out = run.model.generate(torch.tensor([ids]), BUDGET, temperature=0)[0, len(ids) :].tolist()
    return out[: out.index(engine.end_id)] if engine.end_id in out else out


@pytest.fixture(scope="module")
def prompts(engine) -> list[list[int]]:
    return [prompt_ids(engine, p, turns=1 + i % 3) for i, p in enumerate(PROMPTS)]


def test_a_greedy_reply_alone_is_the_references(run, engine, prompts):
    replies = []
    for ids in prompts:
        reply = list(engine.tokens(ids, temperature=0, max_new_tokens=BUDGET))
        assert reply == reference(run, engine, ids)
        replies.append(reply)
    assert all(replies)  # the fixture's model says something to each prompt


def test_greedy_replies_decoded_together_are_the_references(run, engine, prompts):
    decoder = BatchDecoder(engine)
    widths = []
    decoder.on_step = lambda rows: widths.append(len(rows))
    written: list[list[int]] = [[] for _ in prompts]
    rows = [
        decoder.submit(
            ids,
            lambda piece: None,
            temperature=0,
            max_new_tokens=BUDGET,
            on_token=lambda token, logits, i=i: written[i].append(token),
        )
        for i, ids in enumerate(prompts)
    ]
    while not all(row.done for row in rows):
        decoder.step()
    assert len({len(ids) for ids in prompts}) > 1  # rows of different lengths: the masked path
    assert max(widths) == len(prompts)  # all of them in the same forward passes
    for ids, reply in zip(prompts, written, strict=True):
        assert reply == reference(run, engine, ids)


def test_the_references_top_k_of_one_is_greedy(run, engine, prompts):
    idx = torch.tensor([prompts[0]])
    greedy = run.model.generate(idx, 8, temperature=0)
    assert torch.equal(run.model.generate(idx, 8, temperature=1.5, top_k=1), greedy)
