"""Drawing unique conversations from a persona, in one process or in several.

Conversation i is a pure function of (persona, seed, i), so the dataset is simply "the first n
distinct conversations of the sequence 0, 1, 2, ...". Worker processes compute slices of that
sequence; the main process reads the slices back in index order and does all the deduplication
and stopping itself. That is why `--workers 4` gives byte-identical data to `--workers 1`: the
workers only change who computes a conversation, never which conversations are kept.
"""

from __future__ import annotations

import multiprocessing
import random
import re
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from guppyforge.dataset.folder import Row
from guppyforge.errors import GuppyError
from guppyforge.persona.conversations import OffTopicSampler, Sampler
from guppyforge.persona.schema import load_persona
from guppyforge.persona.variation import Varier

# Indices per task sent to a worker: large enough that pickling and scheduling are noise,
# small enough that the work wasted past the stopping point stays a fraction of a second.
CHUNK = 1000


TurnMix = tuple[tuple[int, float], ...]  # (user turns, weight) pairs, e.g. ((1, 6), (2, 3))
# Text a generated message must never hold: template syntax, or a `{name}` / `{pick(...)}` left
# by a template that was meant to expand it (GuppyLM shipped 126 samples of `{pick(...)}`).
TEMPLATE_TEXT = re.compile(r"\{\{|\}\}|\{%|%\}|\{#|#\}|\{[^\W\d]\w*(\([^)]*\))?\}")


def turn_mix(text: str | int | None, persona) -> TurnMix:
    """`--turns` as a mix: N, A-B (uniform), or None for the persona's own `turns:` mix."""
    if text is None:
        return persona.turns or ((1, 1.0),)
    low, high = parse_turns(text)
    return tuple((n, 1.0) for n in range(low, high + 1))


def parse_turns(text: str | int) -> tuple[int, int]:
    """Parse `--turns`: `2` (every conversation has 2 user turns) or `1-3` (1 to 3, per sample)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", str(text))
    low = int(match[1]) if match else 0
    high = int(match[2] or low) if match else 0
    if not 1 <= low <= high <= 16:
        raise GuppyError(
            f"--turns {text}: expected a number of turns from 1 to 16 (e.g. 2) or a range (1-3)."
        )
    return low, high


@dataclass
class DrawResult:
    """What drawing produced: the rows (examples first, then by index) and how it went."""

    rows: list[Row]
    drawn: int  # generated conversations drawn (indices 0 .. drawn-1); examples not included
    unique: int  # how many of those were new, and kept
    examples: int  # hand-written examples kept
    capacity_spent: bool  # stopped before n rows: the persona makes too few distinct ones
    refused: int = 0  # drawn rows left out because their text still held template syntax
    refused_example: str = ""  # the first of them: "template id: text"
    # Per row: its user messages as the templates wrote them when variation changed any, or None.
    unvaried: list[tuple[str, ...] | None] = field(default_factory=list)

    @property
    def varied(self) -> int:
        """Rows whose user side variation changed."""
        return sum(u is not None for u in self.unvaried)

    @property
    def unique_pct(self) -> float:
        """Share of draws that were new, in percent (100.0 when nothing had to be drawn)."""
        return round(100.0 * self.unique / self.drawn, 2) if self.drawn else 100.0


def to_row(conversation) -> Row:
    """A sampler Conversation as a compact, picklable row tuple."""
    messages = tuple((m["role"], m["content"]) for m in conversation.messages)
    return messages, conversation.topic, conversation.template_id, conversation.turns


def turns_for(seed: int, index: int, mix: TurnMix) -> int:
    """The number of turns of conversation `index` for a turn mix.

    Drawn from its own RNG seeded by (seed, index), like everything else about the sample, so it
    does not depend on which process draws it or in which order.
    """
    if len(mix) == 1:
        return mix[0][0]
    rng = random.Random(f"turns:{seed}:{index}")
    if len({w for _, w in mix}) == 1:  # a range A-B: uniform
        return rng.randint(mix[0][0], mix[-1][0])
    x = rng.random() * sum(w for _, w in mix)
    for n, w in mix:
        x -= w
        if x < 0:
            return n
    return mix[-1][0]


Drawn = tuple[Row, "tuple[str, ...] | None"]  # a row, and its unvaried user messages if varied


def draw_range(
    sampler,
    seed: int,
    start: int,
    stop: int,
    turns: TurnMix,
    varier: Varier | None = None,
    offtopic: OffTopicSampler | None = None,
) -> list[Drawn]:
    """Conversations `start .. stop-1` as rows, duplicates included (the caller dedups)."""
    out = []
    for i in range(start, stop):
        if offtopic is not None and offtopic.takes(i):
            c = offtopic.conversation(i)
        else:
            c = sampler.conversation(i, turns=turns_for(seed, i, turns))
        row, unvaried = to_row(c), None
        if varier is not None and varier.on:
            messages, changed = varier.messages(c.messages, i)
            if changed:
                unvaried = tuple(m["content"] for m in c.messages if m["role"] == "user")
                row = (tuple((m["role"], m["content"]) for m in messages), *row[1:])
        out.append((row, unvaried))
    return out


class _Collector:
    """Keeps the first occurrence of each conversation, in index order, and says when to stop.

    Stopping rules, both evaluated on the index sequence alone (so they are deterministic):
    enough rows; or the persona looks spent, i.e. a long run of consecutive duplicates or a
    total number of draws far beyond what a healthy persona needs.
    """

    def __init__(self, n: int, examples: list[Row], bar) -> None:
        self.n = n
        self.seen: set[tuple[tuple[str, str], ...]] = set()
        self.rows: list[Row] = []
        self.unvaried: list[tuple[str, ...] | None] = []
        for row in examples:
            if len(self.rows) < n and row[0] not in self.seen:
                self.seen.add(row[0])
                self.rows.append(row)
                self.unvaried.append(None)
        self.examples = len(self.rows)
        self.drawn = 0
        self.run = 0  # consecutive duplicates
        # 4 draws per row at most: a persona that repeats itself more than that is spent, and
        # generation time stays within a few times that of a healthy persona.
        self.max_draws = max(4 * n, n + 10_000)
        self.max_run = max(1_000, n // 10)
        self.capacity_spent = False
        self.refused, self.refused_example = 0, ""
        self.bar = bar
        bar.update(self.examples)

    @property
    def done(self) -> bool:
        return len(self.rows) >= self.n or self.capacity_spent

    def add(self, rows: list[Drawn]) -> None:
        """Take rows in index order until done; rows past the stopping point are ignored."""
        kept_before = len(self.rows)
        for row, unvaried in rows:
            if self.done:
                break
            self.drawn += 1
            # Dedup key: the whole conversation, i.e. (prompt, reply) for a single turn.
            # Topic and template id are left out: the same text from two templates is a repeat.
            key = row[0]
            bad = next((text for _, text in key if TEMPLATE_TEXT.search(text)), None)
            if bad is not None:  # never written: a model would learn to print template code
                self.refused += 1
                self.refused_example = self.refused_example or f"{row[2]}: {bad!r}"
                self.run += 1
            elif key in self.seen:
                self.run += 1
            else:
                self.run = 0
                self.seen.add(key)
                self.rows.append(row)
                self.unvaried.append(unvaried)
            if len(self.rows) < self.n and (
                self.run >= self.max_run or self.drawn >= self.max_draws
            ):
                self.capacity_spent = True
        self.bar.update(len(self.rows) - kept_before)

    def result(self) -> DrawResult:
        return DrawResult(
            rows=self.rows,
            drawn=self.drawn,
            unique=len(self.rows) - self.examples,
            examples=self.examples,
            capacity_spent=self.capacity_spent,
            refused=self.refused,
            refused_example=self.refused_example,
            unvaried=self.unvaried,
        )


def _chunks(start: int = 0) -> Iterator[tuple[int, int]]:
    while True:
        yield start, start + CHUNK
        start += CHUNK


# --- worker processes ------------------------------------------------------------------------

_worker_state: tuple | None = None  # (sampler, seed, varier, offtopic) for _worker_draw


def _init_worker(persona_path: str, seed: int) -> None:
    # Only where fork is missing (Windows, macOS): such a worker starts as a fresh interpreter
    # and loads the persona itself, since compiled templates do not pickle.
    global _worker_state
    _worker_state = row_makers(load_persona(persona_path), seed)


def row_makers(persona, seed: int) -> tuple:
    """What draws rows: (sampler, seed, varier, off-topic sampler)."""
    sampler = Sampler(persona, seed)
    return sampler, seed, Varier(persona, seed), OffTopicSampler(sampler, seed)


def _worker_draw(start: int, stop: int, turns: TurnMix) -> list[Drawn]:
    sampler, seed, varier, offtopic = _worker_state
    return draw_range(sampler, seed, start, stop, turns, varier, offtopic)


def _start_pool(makers: tuple, persona_path: Path, seed: int, workers: int) -> ProcessPoolExecutor:
    """Worker processes that each hold a Sampler for (persona, seed), ready to draw chunks."""
    global _worker_state
    if "fork" in multiprocessing.get_all_start_methods():
        # A forked worker starts in milliseconds as a copy of this process, with the Sampler
        # already built: loading and compiling the persona again would cost each worker longer
        # than its share of 60K conversations takes to draw.
        _worker_state = makers
        context = multiprocessing.get_context("fork")
        return ProcessPoolExecutor(workers, mp_context=context)
    return ProcessPoolExecutor(
        workers, initializer=_init_worker, initargs=(str(persona_path), seed)
    )


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Stop the workers; chunks drawn past the stopping point are simply dropped."""
    global _worker_state
    pool.shutdown(wait=True, cancel_futures=True)
    _worker_state = None


# --- the entry point -------------------------------------------------------------------------


def draw_unique(
    persona_path: Path,
    persona,
    seed: int,
    n: int,
    turns: TurnMix = ((1, 1.0),),
    workers: int = 1,
    progress: bool = True,
) -> DrawResult:
    """Draw conversations 0, 1, 2, ... until `n` unique rows (examples included) or capacity."""
    makers = row_makers(persona, seed)
    sampler = makers[0]
    examples = [to_row(c) for c in sampler.examples()]  # hand-written: kept as written

    pool = None
    pending: deque[Future] = deque()
    chunks = _chunks()
    if workers > 1:
        # Start the workers before the progress bar: tqdm runs a monitor thread, and forking a
        # process that has threads is what fork's warnings are about.
        pool = _start_pool(makers, persona_path, seed, workers)
        for _ in range(2 * workers):  # two tasks per worker keeps every core busy
            pending.append(pool.submit(_worker_draw, *next(chunks), turns))

    bar = tqdm(total=n, unit="conv", desc="generate", file=sys.stderr, disable=not progress)
    collector = _Collector(n, examples, bar)
    try:
        while not collector.done:
            if pool is None:
                collector.add(draw_range(sampler, seed, *next(chunks), turns, *makers[2:]))
            else:
                collector.add(pending.popleft().result())
                pending.append(pool.submit(_worker_draw, *next(chunks), turns))
    finally:
        bar.close()
        if pool is not None:
            _stop_pool(pool)
    return collector.result()
