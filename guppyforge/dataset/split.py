"""A leak-free train/test split: rows that open with the same user message land in one split.

A shuffled row split lets the same question sit in both splits with different answers, so test
loss and `eval` end up measuring recall of phrasings the model has already seen. A row's opening
user message is what it is about (its topic's ask, an off-topic prompt, an example's first
line): rows are joined into one group when they share an opening, compared after undoing the
user-side variation (persona/variation.py): the message as generated, and the message as its
template wrote it, each case-folded with fillers, punctuation and the character's name taken
away. Whole groups then move to one side, so "no test row's opening, nor a variant of it, appears
anywhere in train" holds by construction rather than by luck.

Later user messages (a topic's follow-ups) are shared context: a generic "why?" or "really?"
follows hundreds of openings, and joining rows by it would merge most multi-turn rows into a few
groups too big for the test split, leaving it single-turn and some topics without test rows. So
a follow-up never joins rows on its own, and a test row is never scored on a follow-up alone.
A follow-up that is also some row's opening is a topic message where it stands, and joins as one:
no test row's opening is ever a later turn in train either.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from typing import NamedTuple

from guppyforge.errors import GuppyError
from guppyforge.persona.variation import normalise


class RowKeys(NamedTuple):
    """What joins a row to others: its opening's keys, and its follow-ups' (context) keys."""

    opening: tuple[str, ...]
    context: tuple[str, ...] = ()


Keys = str | Iterable[str] | RowKeys  # a plain key or keys: every one of them joins rows


def prompt_key(messages: Sequence[tuple[str, str]]) -> str:
    """A row's whole user side, joined by newlines (what `distinct prompts` counts)."""
    return "\n".join(content for role, content in messages if role == "user")


def message_keys(
    messages: Sequence[tuple[str, str]],
    unvaried: Sequence[str] | None = None,
    names: tuple[str, ...] = (),
) -> RowKeys:
    """The keys of a row's user messages, as generated and as written, normalised: the opening's
    and the follow-ups' apart (`unvaried`: the row's user messages before variation, None if it
    had none)."""
    users = [content for role, content in messages if role == "user"]
    written = list(unvaried) if unvaried else []
    opening = dict.fromkeys(normalise(u, names) for u in (users[:1] + written[:1]))
    context = dict.fromkeys(normalise(u, names) for u in (users[1:] + written[1:]))
    return RowKeys(tuple(opening), tuple(k for k in context if k not in opening))


def _group_order(key: str, seed: int) -> bytes:
    # A keyed hash gives every seed its own, stable ordering of the groups. Python's hash() is
    # salted per process, so it would break "same seed -> same data".
    return hashlib.blake2b(key.encode("utf-8"), digest_size=8, key=str(seed).encode()).digest()


def _joining(keys: Sequence[Keys]) -> list[tuple[str, ...]]:
    """Per row, the keys that join it to others: every plain key and opening key, and the
    context keys that some row opens with."""
    rows = [
        (k,) if isinstance(k, str) else k.opening if isinstance(k, RowKeys) else tuple(k)
        for k in keys
    ]
    if not any(isinstance(k, RowKeys) and k.context for k in keys):
        return rows
    openings = set().union(*rows)
    return [
        row + tuple(c for c in k.context if c in openings) if isinstance(k, RowKeys) else row
        for row, k in zip(rows, keys, strict=True)
    ]


def _groups(keys: Sequence[tuple[str, ...]]) -> dict[int, list[int]]:
    """Rows joined when they share a key (union-find): root row -> its rows, in order."""
    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving keeps the trees flat
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, row_keys in enumerate(keys):
        for key in row_keys:
            j = owner.setdefault(key, i)
            if j != i:
                a, b = root(i), root(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)  # the earliest row is the root: order-stable
    groups: dict[int, list[int]] = {}
    for i in range(len(keys)):
        groups.setdefault(root(i), []).append(i)
    return groups


def split_by_prompt(
    keys: Sequence[Keys],
    test_size: float,
    seed: int,
    strata: Sequence[Hashable] | None = None,
) -> tuple[list[int], list[int]]:
    """Split row positions into (train, test) so that no joining key of a test row is in train.

    `keys[i]` is row i's key, or its keys, all joining, or its `RowKeys` (`message_keys`),
    whose context keys join only where some row opens with them. Rows sharing a joining key form
    one group. Groups are visited in an order fixed by the seed and taken whole into test while
    they fit under `test_size * len(keys)` rows, so the test split comes out at or just under the
    requested size. `strata[i]` (row i's topic, say) makes the test split fair to each: every
    stratum gets test rows where a group of it fits, and groups are taken first only while
    their strata stay within their share of the test split; the rest fills as before.
    Both lists keep the rows' original order.
    """
    if not 0 <= test_size < 1:
        raise GuppyError(f"--test-size {test_size}: must be at least 0 and below 1. Try 0.05.")
    target = round(test_size * len(keys))
    if target == 0:
        return list(range(len(keys))), []
    joining = _joining(keys)
    groups = _groups(joining)
    if len(groups) < 2:
        raise GuppyError(
            f"--test-size {test_size}: all {len(keys)} rows share one prompt, so no test split "
            "can avoid it. Add more `ask` templates, or use --test-size 0."
        )

    def name(rows: list[int]) -> str:  # a group's name: its first row's first key
        return next(iter(joining[rows[0]]), "")

    order = sorted(groups.values(), key=lambda rows: _group_order(name(rows), seed))
    taken: list[bool] = [False] * len(order)
    count = 0
    in_stratum: Counter = Counter()

    def take(g: int) -> None:
        nonlocal count
        taken[g] = True
        count += len(order[g])
        if strata is not None:
            in_stratum.update(strata[i] for i in order[g])

    if strata is not None:
        if len(strata) != len(keys):
            raise ValueError(f"{len(strata)} strata for {len(keys)} rows")
        share = {s: max(1.0, test_size * n) for s, n in Counter(strata).items()}
        mix = [Counter(strata[i] for i in rows) for rows in order]

        def fair(g: int) -> bool:  # taking group g keeps every stratum within its share
            return count + len(order[g]) <= target and all(
                in_stratum[s] + n <= share[s] for s, n in mix[g].items()
            )

        # Each stratum gets a test row first (the smallest group that fits, where none is
        # fair), so a large stratum filling its share cannot crowd a small one out.
        for g in range(len(order)):
            if any(in_stratum[s] == 0 for s in mix[g]) and fair(g):
                take(g)
        for stratum in share:
            if in_stratum[stratum] == 0:
                fitting = [
                    g
                    for g in range(len(order))
                    if stratum in mix[g] and not taken[g] and count + len(order[g]) <= target
                ]
                if fitting:
                    take(min(fitting, key=lambda g: len(order[g])))
        for g in range(len(order)):  # then every stratum up to its share
            if not taken[g] and fair(g):
                take(g)
    for g, rows in enumerate(order):
        if count == target:
            break
        # Skip a group that would overshoot; a later, smaller one may still fit exactly.
        if not taken[g] and count + len(rows) <= target:
            take(g)
    if not any(taken):
        # Every group is bigger than the target (a tiny dataset with few prompts): one group,
        # the smallest, still gives a test split rather than none at all.
        take(min(range(len(order)), key=lambda g: len(order[g])))

    test_rows = {i for g, rows in enumerate(order) if taken[g] for i in rows}
    train = [i for i in range(len(keys)) if i not in test_rows]
    return train, sorted(test_rows)
