"""Tokenizing and packing: full rows, no leaks between packed conversations, loss on replies."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from guppyforge.dataset.folder import load_splits
from guppyforge.errors import GuppyError
from guppyforge.model.gpt import GPT, IGNORE, ModelConfig
from guppyforge.model.packing import (
    batches,
    collate,
    epoch_batches,
    pack,
    padding_share,
    tokenize,
)
from guppyforge.model.tokenizer import chat_texts, train_tokenizer

FOODS = ["worms", "flakes", "pellets", "tiny shrimp", "algae", "bloodworms"]
PLACES = ["the castle", "the plant", "the bubbles", "the glass", "the warm gravel"]
ASKS = [
    "are you hungry",
    "do you like {food}",
    "where do you sleep at night",
    "what did you do today",
    "hi guppy",
    "how is the water in your tank today",
]
SENTENCES = [
    "{food}? yes.",
    "always yes.",
    "i ate {food} near {place}.",
    "i swam around {place} and looked for {food} all morning.",
    "the water is warm today.",
    "i like it near {place}.",
    "i am a small fish.",
    "i sleep behind {place}. it is quiet there.",
    "bubbles.",
]


def toy_conversations(n: int, seed: int) -> list[list[dict]]:
    """Short fish conversations (10 to 60 tokens), some with two turns, like generated data."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        messages = []
        for _turn in range(rng.choice([1, 1, 1, 2])):
            food, place = rng.choice(FOODS), rng.choice(PLACES)
            ask = rng.choice(["", "hey, ", "so "]) + rng.choice(ASKS).format(food=food)
            say = " ".join(rng.sample(SENTENCES, rng.randint(1, 3)))
            messages.append({"role": "user", "content": ask})
            messages.append({"role": "assistant", "content": say.format(food=food, place=place)})
        out.append(messages)
    return out


TOY_PERSONA = """\
guppyforge: 1
name: toyfish
display_name: Toy Fish
summary: A small fish for tests.
license: mit
tags: [fish]
grammar:
  food: [worms, flakes]
topics:
  food:
    ask: ["are you hungry"]
    say: ["{{ food }}? yes. always yes."]
probes:
  - ask: are you hungry
    expect_any: [food, worms]
  - ask: where do you sleep
    expect_any: [castle]
"""


def write_toy_dataset(
    path: Path, n_train: int = 300, n_test: int = 40, long: int = 0, persona: bool = True
) -> Path:
    """A dataset folder shaped like `guppyforge generate`'s output, in well under a second."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (path / "data").mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        convs = toy_conversations(n, seed)
        if split == "train":  # conversations that cannot fit a 128-token context
            convs += [[{"role": "user", "content": "tell me everything " * 60}]] * long
        table = pa.table(
            {
                "messages": convs,
                "topic": ["food"] * len(convs),
                "template_id": ["food.ask[0]"] * len(convs),
                "turns": [len(c) // 2 for c in convs],
            }
        )
        pq.write_table(table, path / "data" / f"{split}-00000-of-00001.parquet")
    (path / "stats.json").write_text('{"fingerprint": "toy-0001", "rows": 1}\n')
    if persona:
        (path / "persona.yaml").write_text(TOY_PERSONA)
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    data_dir = write_toy_dataset(tmp_path_factory.mktemp("toy"), n_train=2000, long=3)
    splits = load_splits(data_dir)
    tok = train_tokenizer(chat_texts(splits["train"]), vocab_size=512)
    return splits, tok, tokenize(splits["train"], tok, context=128)


def test_load_splits_reads_the_folder_and_explains_a_bad_one(tmp_path, toy):
    splits, _, _ = toy
    assert splits["train"].num_rows == 2003 and splits["test"].num_rows == 40
    with pytest.raises(GuppyError, match="no such folder"):
        load_splits(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GuppyError, match="not a dataset folder"):
        load_splits(tmp_path / "empty")


def test_too_long_conversations_are_dropped_and_counted(toy):
    _, _, samples = toy
    assert samples.too_long == 3
    assert len(samples) == 2000 and samples.lengths.max() <= 128


def test_rows_are_full_and_every_conversation_appears_once_per_epoch(toy):
    _, _, samples = toy
    plan = epoch_batches(samples, 128, rows_per_batch=16, seed=0, epoch=0)
    rows = [row for batch in plan for row in batch]
    assert sorted(i for row in rows for i in row) == list(range(len(samples)))
    assert all(samples.lengths[row].sum() <= 128 for row in rows)
    assert padding_share(samples, plan, 128) < 0.05
    assert plan == epoch_batches(samples, 128, 16, seed=0, epoch=0)  # seeded
    assert plan != epoch_batches(samples, 128, 16, seed=0, epoch=1)  # reshuffled each epoch


def test_a_batch_is_as_wide_as_its_fullest_row(toy):
    _, _, samples = toy
    plan = epoch_batches(samples, 128, rows_per_batch=16, seed=0, epoch=0)
    widths = {collate(samples, rows, 128).idx.shape[1] for rows in plan}
    assert len(widths) > 1 and all(w % 8 == 0 and w <= 128 for w in widths)
    # Packing alone (every row 128 wide) pads more than grouping rows by fill.
    rows = pack(samples.lengths, np.arange(len(samples)), 128)
    as_full_rows = 1 - samples.lengths.sum() / (len(rows) * 128)
    assert padding_share(samples, plan, 128) < as_full_rows


def test_positions_restart_and_targets_are_the_next_reply_token(toy):
    _, tok, samples = toy
    row = epoch_batches(samples, 128, 16, seed=0, epoch=0)[0][0]
    replies, every = collate(samples, [row], 128, "replies"), collate(samples, [row], 128, "all")
    first, second = (int(n) for n in samples.lengths[row[:2]])
    assert replies.positions[0, first].item() == 0 and replies.positions[0, first - 1] == first - 1
    ids = replies.idx[0]
    # "all": every next token inside a conversation, never across the boundary between two.
    assert torch.equal(every.targets[0, : first - 1], ids[1:first])
    assert every.targets[0, first - 1] == IGNORE
    # "replies": only tokens of the assistant's text (and its <|im_end|>) are predicted.
    counted = replies.targets[0][replies.targets[0] != IGNORE]
    text = tok.decode(counted.tolist(), skip_special_tokens=False)
    assert "user" not in text and "<|im_end|>" in text
    assert 0 < len(counted) < (every.targets[0] != IGNORE).sum()
    assert replies.tokens == int(samples.lengths[row].sum())
    assert second > 0


def test_packed_conversations_do_not_see_each_other(toy):
    """The logits of a conversation packed after another equal those it gets alone."""
    _, _, samples = toy
    row = epoch_batches(samples, 128, 16, seed=0, epoch=0)[0][0]
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=512, n_layer=2, n_head=2, d_model=32, d_ff=64)).eval()
    packed = collate(samples, [row], 128)
    alone = collate(samples, [row[1:2]], 128)
    a, n = int(samples.lengths[row[0]]), int(samples.lengths[row[1]])
    with torch.no_grad():
        lp = model(packed.idx, positions=packed.positions, attn_mask=packed.attn_mask)
        la = model(alone.idx, positions=alone.positions, attn_mask=alone.attn_mask)
    assert torch.allclose(lp[0, a : a + n], la[0, :n], atol=1e-5)
    assert not torch.isnan(lp).any()  # padding rows of the mask are never empty


def test_batches_continue_exactly_from_a_position(toy):
    _, _, samples = toy
    stream = batches(samples, 128, rows_per_batch=64, seed=3)
    first = [next(stream) for _ in range(12)]  # crosses into a second epoch
    assert first[-1][1][0] >= 1
    again = batches(samples, 128, rows_per_batch=64, seed=3, start=first[5][1])
    for (expected, _), (batch, _) in zip(first[6:], again, strict=False):
        assert torch.equal(expected.idx, batch.idx)
        assert np.array_equal(expected.targets.numpy(), batch.targets.numpy())


def test_a_long_conversation_is_cut_after_its_last_whole_turn():
    import numpy as np

    from guppyforge.model.packing import turn_end

    # user (0) and reply (1) tokens of a 3-turn conversation: turns end at 5, 10 and 15.
    reply = np.array([0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 0])
    assert turn_end(reply, 12) == 10  # the third turn does not fit: cut after the second
    assert turn_end(reply, 10) == 10
    assert turn_end(reply, 4) == 0  # not even the first turn fits: the caller drops it


def test_the_reply_mask_covers_exactly_the_tokens_that_start_inside_a_reply():
    """The mask by binary search equals its definition, token by token, on awkward text."""
    from guppyforge.model.tokenizer import END, START, encode_conversations

    conversations = [
        [{"role": "user", "content": "héllo 🐟🐟 fish?"}, {"role": "assistant", "content": "blub 🫧 ok"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""},
         {"role": "user", "content": "  spaces  "}, {"role": "assistant", "content": "日本語 ok\n"}],
    ]  # fmt: skip
    tok = train_tokenizer([c["content"] for conv in conversations for c in conv] * 5, 300)
    ids, masks = encode_conversations(tok, conversations)
    for conv, got in zip(conversations, masks, strict=True):
        text, spans = "", []
        for m in conv:
            head = f"{START}{m['role']}\n"
            start = len(text) + len(head)
            text += head + m["content"] + END
            spans += [(start, len(text))] if m["role"] == "assistant" else []
            text += "\n"
        offsets = tok.encode(text, add_special_tokens=False).offsets
        assert got == [int(any(a <= s < b for a, b in spans)) for s, _ in offsets]
        assert sum(got) >= len(spans)  # each reply has at least its <|im_end|>
