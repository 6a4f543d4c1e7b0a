"""Batched decoding: many replies written together, one forward pass per step for all of them.

Decoding one token is a matrix-vector product per weight matrix, so its cost is streaming the
weights from memory; decoding 8 or 32 tokens at once streams them once and does 8 or 32 times
the arithmetic, for about the same time. A server with concurrent users therefore keeps every
active reply in one batch:

    decoder = BatchDecoder(engine)                  # the Engine's model, tokenizer, end token
    row = decoder.submit(ids, emit, temperature=0)  # emit(piece) per text piece, emit(None) at the end
    decoder.start()                                 # a thread that steps while anything is active

Each reply is a `Row`: one row of a batched KV cache (its own length: the cache is filled left
to right per row, and a mask hides each row's unused slots), its own sampling options and random
generator, its own stop strings. Rows join and leave between steps: the prompts that arrived
since the last step are run together (prefill), then each row decodes with the others. The
rules are the engine's own (`sample_next`, `StopStrings`, `TextDecoder`, the same length and
context limits), so a greedy reply here equals `Engine.reply(..., temperature=0)`.
"""

from __future__ import annotations

import threading
import traceback
from collections import deque
from collections.abc import Callable

import torch

from guppyforge.defaults import MAX_NEW_TOKENS, TEMPERATURE, TOP_K
from guppyforge.model.engine import Engine, StopStrings, TextDecoder, sample_next
from guppyforge.model.gpt import KVCache

Emit = Callable[[str | None], None]  # a text piece, or None once the reply has ended


class Busy(Exception):
    """Too many replies waiting already: the caller should come back later."""


class Row:
    """One reply being decoded in the batch; read `finish_reason` and the counts once it ended."""

    def __init__(self, engine: Engine, ids: list[int], emit: Emit, options: dict):
        self.ids = ids[-engine.cfg.context :]
        self.emit = emit
        self.temperature = options.get("temperature", TEMPERATURE)
        top_k = options.get("top_k", TOP_K)
        self.top_k, self.top_p = top_k or None, options.get("top_p", 1.0)
        self.max_new_tokens = options.get("max_new_tokens", MAX_NEW_TOKENS)
        # A private generator, as in Engine.tokens: one reply's sampling never depends on others.
        self.generator = torch.Generator(device=engine.device)
        seed = options.get("seed")
        self.generator.manual_seed(seed) if seed is not None else self.generator.seed()
        self.text = TextDecoder(engine.tokenizer)
        self.stops = StopStrings(options.get("stop", ()))
        self.prompt_tokens, self.completion_tokens = len(ids), 0
        self.finish_reason: str | None = None  # "stop", "length", or "error" (a bug of ours)
        self.cancelled = False  # set from any thread; the decoder drops the row at its next step
        self.slot, self.length, self.last = -1, 0, 0  # cache row, tokens cached, token to feed

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class BatchCache:
    """A KV cache with one row per reply: (rows, heads, context, head_dim) per layer.

    `GPT.forward` calls `update(layer, k, v)` with each layer's new keys and values, (B, heads,
    1, head_dim) for the first B rows; they are written at each row's own position and the
    filled part of the cache is returned. `positions` and the attention mask passed to the
    model keep each row to its own tokens.
    """

    def __init__(self, n_layer: int):
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.pos = torch.zeros(0, dtype=torch.long)  # where this step's token goes, per row
        self.width = 0  # how many positions this step attends to (longest row + 1)
        self.n_layer = n_layer

    def __len__(self) -> int:
        return self.width

    def length(self, layer: int) -> int:
        return self.width  # nonzero: the attention layer checks new tokens come one at a time

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[0] if self.keys else 0

    def grow(self, rows: int, like: torch.Tensor, context: int) -> None:
        """Room for `rows` rows, keeping what is cached; `like` gives heads, dtype and device."""
        _, heads, _, dim = like.shape
        for store in (self.keys, self.values):
            for layer in range(self.n_layer):
                new = like.new_zeros(rows, heads, context, dim)
                if store and layer < len(store):
                    new[: store[layer].shape[0]] = store[layer]
                    store[layer] = new
                else:
                    store.append(new)

    def put(self, slot: int, prefill: KVCache, row: int, n: int) -> None:
        """Copy the first `n` positions of a prefill's row `row` into row `slot`."""
        for layer in range(self.n_layer):
            self.keys[layer][slot, :, :n] = prefill.keys[layer][row, :, :n]
            self.values[layer][slot, :, :n] = prefill.values[layer][row, :, :n]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        rows = torch.arange(k.shape[0], device=k.device)
        self.keys[layer][rows, :, self.pos] = k[:, :, 0]
        self.values[layer][rows, :, self.pos] = v[:, :, 0]
        return self.keys[layer][: k.shape[0], :, : self.width], self.values[layer][
            : k.shape[0], :, : self.width
        ]


class BatchDecoder:
    """Decodes every active reply together, one token per reply per step.

    `submit` and `cancel` may be called from any thread; `step` runs in one thread (the one
    `start` makes, or a test's own). At most `max_rows` replies decode at once; up to
    `max_waiting` more wait for a free row, and `submit` raises Busy past that.
    """

    def __init__(self, engine: Engine, max_rows: int = 32, max_waiting: int = 256):
        self.engine, self.model, self.cfg = engine, engine.model, engine.cfg
        self.max_rows, self.max_waiting = max_rows, max_waiting
        self.rows: list[Row | None] = []  # by cache slot; None where a slot is free
        self.waiting: deque[Row] = deque()
        self.cache = BatchCache(self.cfg.n_layer)
        self.wake = threading.Condition()
        self.thread: threading.Thread | None = None
        self.closing = False
        self.steps = 0  # batched forward passes so far
        self.on_step: Callable[[list[Row]], None] | None = None  # sees each step's rows (tests)

    # --- any thread ----------------------------------------------------------------------------

    def submit(self, ids: list[int], emit: Emit, **options) -> Row:
        """Queue a reply to prompt `ids`; options as `Engine.tokens` takes them, plus `stop`."""
        row = Row(self.engine, ids, emit, options)
        with self.wake:
            if len(self.waiting) >= self.max_waiting:
                raise Busy(f"{len(self.waiting)} requests are already waiting.")
            self.waiting.append(row)
            self.wake.notify()
        return row

    def cancel(self, row: Row) -> None:
        """Stop a reply (its client hung up); its row is free at the next step."""
        row.cancelled = True
        with self.wake:
            self.wake.notify()

    @property
    def active(self) -> int:
        return sum(r is not None for r in self.rows)

    def start(self) -> None:
        """Step in a background thread whenever a reply is active or waiting."""
        self.closing = False
        self.thread = threading.Thread(target=self._loop, name="guppyforge-decoder", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        with self.wake:
            self.closing = True
            self.wake.notify()
        if self.thread is not None:
            self.thread.join()

    def _loop(self) -> None:
        while True:
            with self.wake:
                while not self.closing and not self.waiting and not self.active:
                    self.wake.wait()
                if self.closing:
                    return
            try:
                self.step()
            except Exception:  # a bug of ours: end every reply in flight, keep serving
                traceback.print_exc()
                for row in [*self.rows, *self.waiting]:
                    if row is not None and not row.done:
                        self._finish(row, "error", flush=False)
                self.rows, self.waiting = [], deque()

    # --- the decoding thread -------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> None:
        """Drop cancelled rows, prefill waiting ones into free rows, then decode one token each."""
        for slot, row in enumerate(self.rows):
            if row is not None and row.cancelled and not row.done:
                self._finish(row, "stop", flush=False)
            if row is not None and row.done:
                self.rows[slot] = None
        while self.rows and self.rows[-1] is None:
            self.rows.pop()  # rows past the last active one are never computed
        joining: list[Row] = []
        while self.waiting and self.active + len(joining) < self.max_rows:
            with self.wake:
                row = self.waiting.popleft()
            if row.cancelled:
                self._finish(row, "stop", flush=False)
            else:
                joining.append(row)
        if joining:
            self._prefill(joining)
        live = [r for r in self.rows if r is not None and not r.done]
        if not live:
            return
        if self.on_step is not None:
            self.on_step(live)
        n = len(self.rows)
        # Free slots below the last active row decode a dummy token at position 0; their
        # results are thrown away, and a new row's prefill overwrites what they cached.
        feed = [(r.last, r.length) if r is not None and not r.done else (0, 0) for r in self.rows]
        tokens = torch.tensor([[t] for t, _ in feed], device=self.engine.device)
        pos = torch.tensor([p for _, p in feed], device=self.engine.device)
        self.cache.pos, self.cache.width = pos, int(pos.max()) + 1
        mask = torch.arange(self.cache.width, device=pos.device)[None, :] <= pos[:, None]
        logits = self.model(tokens, positions=pos[:, None], attn_mask=mask[:, None, None, :],
                            cache=self.cache)[0][:, -1]  # fmt: skip
        self.steps += 1
        greedy = logits.argmax(-1).tolist()
        for slot in range(n):
            row = self.rows[slot]
            if row is not None and not row.done:
                row.length += 1
                self._take(row, logits[slot], greedy[slot])

    def _prefill(self, joining: list[Row]) -> None:
        """Run the new prompts in one pass, store their caches in free rows, take first tokens.

        Prompts are padded on the right: attention is causal, so padding after a prompt never
        changes it, and each prompt's next token comes from its own last position.
        """
        longest = max(len(r.ids) for r in joining)
        x = [r.ids + [0] * (longest - len(r.ids)) for r in joining]
        prefill = KVCache(self.cfg.n_layer)
        logits = self.model(torch.tensor(x, device=self.engine.device), cache=prefill)[0]
        for i, row in enumerate(joining):
            slot = next((j for j, r in enumerate(self.rows) if r is None), len(self.rows))
            if slot >= self.cache.capacity:
                rows = min(max(2 * self.cache.capacity, 4), self.max_rows)
                self.cache.grow(max(rows, slot + 1), prefill.keys[0], self.cfg.context)
            self.cache.put(slot, prefill, i, len(row.ids))
            if slot == len(self.rows):
                self.rows.append(None)
            self.rows[slot] = row
            row.slot, row.length = slot, len(row.ids)
            last = logits[i, len(row.ids) - 1]
            self._take(row, last, int(last.argmax()))

    def _take(self, row: Row, logits: torch.Tensor, greedy: int) -> None:
        """Pick the row's next token and apply the engine's stop rules to it."""
        if row.cancelled:
            self._finish(row, "stop", flush=False)
            return
        if row.temperature <= 0:
            token = greedy
        else:
            token = sample_next(logits, row.temperature, row.top_k, row.top_p, row.generator)
        if token == self.engine.end_id:
            self._finish(row, "stop")
            return
        row.completion_tokens += 1
        if piece := row.text.push(token):
            if out := row.stops.feed(piece):
                row.emit(out)
            if row.stops.stopped:
                self._finish(row, "stop", flush=False)
                return
        # Engine.tokens' limits: the reply's budget, and the learned positions (the context).
        if row.completion_tokens >= row.max_new_tokens or row.length + 1 > self.cfg.context:
            self._finish(row, "length")
            return
        row.last = token

    def _finish(self, row: Row, reason: str, flush: bool = True) -> None:
        row.finish_reason = reason
        if flush:
            if (piece := row.text.flush()) and (out := row.stops.feed(piece)):
                row.emit(out)
            if row.stops.stopped:
                row.finish_reason = "stop"
            elif out := row.stops.flush():
                row.emit(out)
        row.emit(None)
