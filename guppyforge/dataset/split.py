"""A leak-free train/test split: rows that share a user message always land in the same split.

A shuffled row split lets the same question sit in both splits with different answers, so test
loss and `eval` end up measuring recall of phrasings the model has already seen. Rows are joined
into one group when they share any user message (in any turn), compared after undoing the
user-side variation (persona/variation.py): the message as generated, and the message as its
template wrote it, each case-folded with fillers, punctuation and the character's name taken
away. Whole groups then move to one side, so "no user message of a test row, nor a variant of one,
appears in train" holds by construction rather than by luck.

The cost: follow-ups that many topics share ("why?") join most multi-turn rows into a few large
groups, which stay in train, so some topics get no test rows (generate warns and names them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from guppyforge.errors import GuppyError
from guppyforge.persona.variation import normalise


def prompt_key(messages: Sequence[tuple[str, str]]) -> str:
    """A row's whole user side, joined by newlines (what `distinct prompts` counts)."""
    return "\n".join(content for role, content in messages if role == "user")


def message_keys(
    messages: Sequence[tuple[str, str]],
    unvaried: Sequence[str] | None = None,
    names: tuple[str, ...] = (),
) -> tuple[str, ...]:
    """The keys that join a row to others: each user message, as generated and as written,
    normalised (`unvaried`: the row's user messages before variation, None if it had none)."""
    users = [content for role, content in messages if role == "user"]
    return tuple(dict.fromkeys(normalise(u, names) for u in (*users, *(unvaried or ()))))


def _group_order(key: str, seed: int) -> bytes:
    # A keyed hash gives every seed its own, stable ordering of the groups. Python's hash() is
    # salted per process, so it would break "same seed -> same data".
    return hashlib.blake2b(key.encode("utf-8"), digest_size=8, key=str(seed).encode()).digest()


def _groups(keys: Sequence[str | Iterable[str]]) -> dict[int, list[int]]:
    """Rows joined when they share a key (union-find): root row -> its rows, in order."""
    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving keeps the trees flat
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, row_keys in enumerate(keys):
        for key in (row_keys,) if isinstance(row_keys, str) else row_keys:
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
    keys: Sequence[str | Iterable[str]], test_size: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split row positions into (train, test) so that no key of a test row is a key in train.

    `keys[i]` is row i's key, or its keys (`message_keys`): rows sharing any key form one
    group. Groups are visited in an order fixed by the seed and taken whole into test while they
    fit under `test_size * len(keys)` rows, so the test split comes out at or just under the
    requested size. Both lists keep the rows' original order.
    """
    if not 0 <= test_size < 1:
        raise GuppyError(f"--test-size {test_size}: must be at least 0 and below 1. Try 0.05.")
    target = round(test_size * len(keys))
    if target == 0:
        return list(range(len(keys))), []
    groups = _groups(keys)
    if len(groups) < 2:
        raise GuppyError(
            f"--test-size {test_size}: all {len(keys)} rows share one prompt, so no test split "
            "can avoid it. Add more `ask` templates, or use --test-size 0."
        )

    def name(rows: list[int]) -> str:  # a group's name: its first row's first key
        first = keys[rows[0]]
        return first if isinstance(first, str) else next(iter(first), "")

    order = sorted(groups.values(), key=lambda rows: _group_order(name(rows), seed))
    in_test: list[list[int]] = []
    taken = 0
    for rows in order:
        # Skip a group that would overshoot; a later, smaller one may still fit exactly.
        if taken + len(rows) <= target:
            in_test.append(rows)
            taken += len(rows)
            if taken == target:
                break
    if not in_test:
        # Every group is bigger than the target (a tiny dataset with few prompts): one group,
        # the smallest, still gives a test split rather than none at all.
        in_test.append(min(order, key=len))

    test_rows = {i for rows in in_test for i in rows}
    train = [i for i in range(len(keys)) if i not in test_rows]
    return train, sorted(test_rows)
