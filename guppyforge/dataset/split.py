"""A leak-free train/test split: rows that share a prompt always land in the same split.

A shuffled row split lets the same question sit in both splits with different answers, so test
loss and `eval` end up measuring recall of phrasings the model has already seen. Grouping by the
prompt string first, and moving whole groups, makes "no test prompt appears in train" hold by
construction rather than by luck.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from guppyforge.errors import GuppyError


def prompt_key(messages: Sequence[tuple[str, str]]) -> str:
    """The string a row is grouped by: its user messages, joined by newlines.

    For a single-turn row this is just the question; for a multi-turn row it is the whole user
    side, so two conversations are the same group only when the user said exactly the same things.
    """
    return "\n".join(content for role, content in messages if role == "user")


def _group_order(key: str, seed: int) -> bytes:
    # A keyed hash gives every seed its own, stable ordering of the groups. Python's hash() is
    # salted per process, so it would break "same seed -> same data".
    return hashlib.blake2b(key.encode("utf-8"), digest_size=8, key=str(seed).encode()).digest()


def split_by_prompt(
    keys: Sequence[str], test_size: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split row positions into (train, test) so that no key of the test side is in train.

    `keys[i]` is row i's prompt key. Groups are visited in an order fixed by the seed and taken
    whole into test while they fit under `test_size * len(keys)` rows, so the test split comes
    out at or just under the requested size. Both lists keep the rows' original order.
    """
    if not 0 <= test_size < 1:
        raise GuppyError(f"--test-size {test_size}: must be at least 0 and below 1. Try 0.05.")
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)

    target = round(test_size * len(keys))
    if target == 0:
        return list(range(len(keys))), []
    if len(groups) < 2:
        raise GuppyError(
            f"--test-size {test_size}: all {len(keys)} rows share one prompt, so no test split "
            "can avoid it. Add more `ask` templates, or use --test-size 0."
        )

    order = sorted(groups, key=lambda k: _group_order(k, seed))
    in_test: set[str] = set()
    taken = 0
    for key in order:
        size = len(groups[key])
        # Skip a group that would overshoot; a later, smaller one may still fit exactly.
        if taken + size <= target:
            in_test.add(key)
            taken += size
            if taken == target:
                break
    if not in_test:
        # Every group is bigger than the target (a tiny dataset with few prompts): one group,
        # the smallest, still gives a test split rather than none at all.
        in_test.add(min(order, key=lambda k: len(groups[k])))

    train = [i for i, key in enumerate(keys) if key not in in_test]
    test = [i for i, key in enumerate(keys) if key in in_test]
    return train, test
