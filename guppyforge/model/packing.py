"""From tokenized conversations to training batches: tokenize, pack into rows, mask, collate.

Our conversations are short (26 to 35 tokens on average) and the context is 128. Padding each
batch to its longest sample spends a fifth to a third of the compute on padding, so several
conversations are *packed* into one row instead, and rows of similar fill are batched together
(a batch is only as wide as its fullest row). Two things keep packed conversations from leaking
into each other: a block-diagonal causal mask (a token attends only to earlier tokens of its own
conversation) and positions that restart at 0 for each conversation (so each one looks exactly
as if it were alone).

`train` and `eval` share these functions: `tokenize`, `pack`, `epoch_batches`, `batches`,
`collate` and `eval_loss`.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Tokenizer

from guppyforge.model.gpt import IGNORE
from guppyforge.model.tokenizer import encode_conversations


@dataclass
class Samples:
    """Tokenized conversations, stored end to end in flat arrays (cheap to slice and pack)."""

    tokens: np.ndarray  # every kept conversation's token ids, one after another
    reply: np.ndarray  # 1 where the token belongs to a character reply (see encode_conversations)
    starts: np.ndarray  # conversation i is tokens[starts[i] : starts[i] + lengths[i]]
    lengths: np.ndarray
    too_long: int  # conversations whose first turn alone is past the context: dropped
    truncated: int = 0  # multi-turn conversations cut at the last turn that fits the context

    def __len__(self) -> int:
        return len(self.lengths)


def tokenize(split, tok: Tokenizer, context: int) -> Samples:
    """Encode every conversation with `datasets.map` (batched), then flatten to arrays.

    A conversation longer than `context` is cut after its last whole turn that fits (counted
    in `truncated`), never inside a reply: a cut reply would teach the model to stop
    mid-sentence. One whose first turn alone does not fit is dropped (counted in `too_long`).
    """

    def encode(batch):
        ids, mask = encode_conversations(tok, batch["messages"])
        return {"ids": ids, "reply": mask}

    encoded = split.map(
        encode,
        batched=True,
        batch_size=1000,
        remove_columns=split.column_names,
        keep_in_memory=True,  # no cache files next to the user's data
        # Named by what it depends on (the data and this tokenizer), not by hashing `encode`.
        new_fingerprint=hashlib.sha256(f"{split._fingerprint}{tok.to_str()}".encode()).hexdigest()[
            :32
        ],
    )
    ids = encoded.data.column("ids").combine_chunks()
    reply = encoded.data.column("reply").combine_chunks()
    offsets = ids.offsets.to_numpy().astype(np.int64)
    lengths = np.diff(offsets)
    reply_mask = reply.values.to_numpy().astype(np.int8)
    truncated = 0
    for i in np.flatnonzero(lengths > context).tolist():  # few: a loop is fine
        start = offsets[i]
        fit = turn_end(reply_mask[start : start + lengths[i]], context)
        if fit:
            lengths[i], truncated = fit, truncated + 1
    keep = lengths <= context
    return Samples(
        tokens=ids.values.to_numpy().astype(np.int64),
        reply=reply_mask,
        starts=offsets[:-1][keep],
        lengths=lengths[keep],
        too_long=int((~keep).sum()),
        truncated=truncated,
    )


def turn_end(reply: np.ndarray, context: int) -> int:
    """Tokens up to the end of the last whole turn within `context` (0: not even the first).

    A turn ends where a reply's tokens (its closing <|im_end|> included) stop.
    """
    ends = np.flatnonzero((reply[:-1] == 1) & (reply[1:] == 0)) + 1
    ends = ends[ends <= context]
    return int(ends[-1]) if len(ends) else 0


def pack(lengths: np.ndarray, order: np.ndarray, context: int, open_rows: int = 16) -> list:
    """Group conversations (in `order`) into rows of at most `context` tokens.

    Best fit over a few open rows: each conversation goes into the open row it fills most
    tightly, and when none has room the fullest row is closed. Keeping several rows open lets a
    short conversation fill the gap a long one left (padding well under 5 %), while the rows
    still follow the shuffled order (no sorting by length, which would bias the batches).
    """
    rows: list[list[int]] = []
    free: list[int] = []
    done: list[list[int]] = []
    for i in order.tolist():
        n = int(lengths[i])
        fits = [r for r, room in enumerate(free) if n <= room]
        if fits:
            best = min(fits, key=free.__getitem__)
            rows[best].append(i)
            free[best] -= n
            continue
        if len(rows) == open_rows:
            fullest = free.index(min(free))
            done.append(rows.pop(fullest))
            free.pop(fullest)
        rows.append([i])
        free.append(context - n)
    return done + rows


GROUP = 8  # batches whose rows are sorted by fill together (see group_rows)


def group_rows(samples: Samples, rows: list, rows_per_batch: int, rng=None) -> list:
    """Cut packed rows into batches, putting rows of similar fill together.

    Each batch is only as wide as its fullest row, so a batch of rows holding three
    conversations (about 105 tokens) need not be padded to 128. Rows are sorted by fill within
    spans of GROUP batches only, and those batches shuffled (with `rng`), so the model still
    sees full and less full batches mixed through the epoch.
    """
    fill = [int(samples.lengths[row].sum()) for row in rows]
    out: list[list[list[int]]] = []
    span = rows_per_batch * GROUP
    for start in range(0, len(rows), span):
        part = sorted(range(start, min(start + span, len(rows))), key=fill.__getitem__)
        group = [
            [rows[i] for i in part[b : b + rows_per_batch]]
            for b in range(0, len(part), rows_per_batch)
        ]
        if rng is not None:
            group = [group[i] for i in rng.permutation(len(group))]
        out += group
    return out


def epoch_batches(samples: Samples, context: int, rows_per_batch: int, seed: int, epoch: int):
    """The batches of one epoch (lists of packed rows): a fresh shuffle per epoch, seeded."""
    rng = np.random.default_rng([seed, epoch])
    rows = pack(samples.lengths, rng.permutation(len(samples)), context)
    return group_rows(samples, rows, rows_per_batch, rng)


def row_width(samples: Samples, rows: list, context: int) -> int:
    """How wide a batch of `rows` is: its fullest row, rounded up to a multiple of 8."""
    # Multiples of 8 suit vector units and tensor cores, and leave torch.compile few shapes.
    widest = max(int(samples.lengths[row].sum()) for row in rows)
    return min(context, -(-widest // 8) * 8)


def padding_share(samples: Samples, batches: list, context: int) -> float:
    """The share of the positions computed on that hold padding rather than conversation."""
    used = sum(int(samples.lengths[row].sum()) for rows in batches for row in rows)
    computed = sum(len(rows) * row_width(samples, rows, context) for rows in batches)
    return 1 - used / max(1, computed)


@dataclass
class Batch:
    idx: torch.Tensor  # (B, T) input token ids
    targets: torch.Tensor  # (B, T) the next token where the loss counts it, else IGNORE
    positions: torch.Tensor  # (B, T) restart at 0 for each conversation in a row
    attn_mask: torch.Tensor  # (B, 1, T, T) bool, True where a token may attend
    tokens: int  # real conversation tokens (not padding): what tokens/s counts

    def to(self, device: torch.device) -> Batch:
        move = dict(device=device, non_blocking=True)
        return Batch(
            self.idx.to(**move),
            self.targets.to(**move),
            self.positions.to(**move),
            self.attn_mask.to(**move),
            self.tokens,
        )


def collate(samples: Samples, rows: list, context: int, loss_on: str = "replies") -> Batch:
    """Lay out packed rows as tensors, each as wide as the batch's fullest row."""
    B, T = len(rows), row_width(samples, rows, context)
    idx = np.zeros((B, T), np.int64)  # 0 is <|pad|>
    targets = np.full((B, T), IGNORE, np.int64)
    positions = np.zeros((B, T), np.int64)
    segment = np.full((B, T), -1, np.int64)  # which conversation each position holds
    for b, row in enumerate(rows):
        at = 0
        for n_in_row, i in enumerate(row):
            s, n = samples.starts[i], samples.lengths[i]
            ids = samples.tokens[s : s + n]
            idx[b, at : at + n] = ids
            positions[b, at : at + n] = np.arange(n)
            segment[b, at : at + n] = n_in_row
            # Position t predicts token t+1, so the mask is read one token ahead: the loss
            # counts a prediction when the token being predicted is part of a reply.
            counted = samples.reply[s + 1 : s + n] == 1 if loss_on == "replies" else True
            targets[b, at : at + n - 1] = np.where(counted, ids[1:], IGNORE)
            at += n
    seg = torch.from_numpy(segment)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    # Block-diagonal and causal: same conversation, and not in the future. Padding is its own
    # block, so no row of the mask is empty (an all-False row would make softmax return NaN).
    attn_mask = (seg[:, :, None] == seg[:, None, :]) & causal
    tokens = int((segment >= 0).sum())
    return Batch(
        torch.from_numpy(idx),
        torch.from_numpy(targets),
        torch.from_numpy(positions),
        attn_mask.unsqueeze(1),
        tokens,
    )


def batches(
    samples: Samples,
    context: int,
    rows_per_batch: int,
    seed: int,
    loss_on: str = "replies",
    start: tuple[int, int] = (0, 0),
) -> Iterator[tuple[Batch, tuple[int, int]]]:
    """Batches forever, epoch after epoch, each with the position (epoch, batch) after it.

    The position is all a checkpoint needs to continue exactly: an epoch's batches depend only
    on the seed and the epoch number, so they are rebuilt on resume rather than stored.
    """
    epoch, index = start
    plan = epoch_batches(samples, context, rows_per_batch, seed, epoch)
    while True:
        if index == len(plan):
            epoch, index = epoch + 1, 0
            plan = epoch_batches(samples, context, rows_per_batch, seed, epoch)
        index += 1
        yield collate(samples, plan[index - 1], context, loss_on), (epoch, index)


@torch.no_grad()
def eval_loss(
    model: torch.nn.Module,
    samples: Samples,
    context: int,
    device: torch.device,
    loss_on: str = "replies",
    rows_per_batch: int = 32,
    max_rows: int | None = None,
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
) -> tuple[float, float]:
    """Loss and perplexity on `samples` (in a fixed order), weighted by counted tokens.

    With `max_rows`, only the first rows of that order (a fixed subset, so evals compare).
    """
    rows = pack(samples.lengths, np.arange(len(samples)), context)[:max_rows]
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for rows_of_batch in group_rows(samples, rows, rows_per_batch):
        batch = collate(samples, rows_of_batch, context, loss_on).to(device)
        n = int((batch.targets != IGNORE).sum())
        with autocast():
            total += float(model(batch.idx, batch.targets, batch.positions, batch.attn_mask)) * n
        count += n
    model.train(was_training)
    loss = total / max(1, count)
    # Perplexity: e^loss, "as unsure as choosing among this many tokens at each step".
    return loss, math.exp(min(loss, 50.0))
