"""The inference engine: the one place where a trained model turns conversations into replies.

chat, eval, the trainer's samples, serve and `why`'s hesitation view all call it, so a reply is
the same whether it is typed in a terminal, scored, or requested over HTTP:

    engine = Engine(model, tokenizer)
    engine.reply(messages, temperature=0)          # the whole reply
    completion = engine.stream(messages, seed=1)  # text pieces as the model writes them
    for piece in completion: ...                   # then .finish_reason, .completion_tokens
    engine.replies([messages, ...], seeds=[1, 2])  # many replies, decoded together
    engine.inside(messages, reply)                 # each reply token's candidates and attention

It is batch-native: every reply is a `Row` of a `BatchDecoder`, and a single reply is a batch of
one. Decoding one token is a matrix-vector product per weight matrix, so its cost is streaming
the weights from memory; decoding 8 or 32 rows at once streams them once, for about the same
time. A server keeps every active reply in one batch (`BatchDecoder.start` steps in a thread).

What happens to a reply, in order: build the ChatML prompt that fits the context
(`build_prompt`, in tokenizer.py beside the chat format), run it once through the model to
fill its row of the KV cache (prefill), then feed one token per step (`DecodeStep`, in
decode.py), picking each next token from the logits (`sample_next`) until a stop rule fires
(`BatchDecoder._take`), and decode the tokens to text without ever splitting a character
(`TextStream`) or showing part of a stop string (`StopStrings`); those three are sampling.py's.
Prefill and decode store and read the cache through its one method, `KVCache.update`.
"""

from __future__ import annotations

import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator

import torch
from tokenizers import Tokenizer

from guppyforge.defaults import MAX_NEW_TOKENS, TEMPERATURE, TOP_K
from guppyforge.model.decode import DecodeStep, decode_layout
from guppyforge.model.gpt import GPT, ModelConfig
from guppyforge.model.inside import Inside, reply_inside
from guppyforge.model.sampling import StopStrings, TextStream, check_sampling, sample_next
from guppyforge.model.tokenizer import END, build_prompt, prompt_budget

OnToken = Callable[[int, torch.Tensor], None]  # (token id, the logits it was drawn from)
Emit = Callable[[str | None], None]  # a text piece, or None once the reply has ended


class KVCache:
    """Keys and values of every token each reply has seen, allocated once and written in place:
    per layer a keys and a values tensor (rows, heads, context, head_dim), one row per reply,
    laid out as attention reads them, so what a layer attends to is a plain slice.

    Without it, each new token would recompute attention inputs for the whole prefix: O(T^2)
    projections instead of O(T). The decoder says where the next pass writes (`prefill`,
    `decode`); every pass, the prompt's (`GPT.forward`) or one token's (`DecodeStep`), then
    calls `update` once per layer.
    """

    def __init__(self, cfg: ModelConfig, rows: int, like: torch.Tensor):
        shape = (rows, cfg.n_head, cfg.context, cfg.d_model // cfg.n_head)
        self.keys = [like.new_zeros(shape) for _ in range(cfg.n_layer)]
        self.values = [like.new_zeros(shape) for _ in range(cfg.n_layer)]
        self.slots: slice | torch.Tensor | None = None  # prefill: the rows the prompts go to
        self.pos: torch.Tensor | None = None  # decode: each row's position, when they differ
        self.index: torch.Tensor | None = None  # ...and the rows they are at
        self.at = 0  # decode: the one position every row writes, when they agree
        self.width = 0  # decode: how many positions this step attends to

    @property
    def rows(self) -> int:
        return self.keys[0].shape[0]

    def grow(self, rows: int) -> None:
        """Room for `rows` rows, keeping what is cached."""
        for tensors in (self.keys, self.values):
            for layer, old in enumerate(tensors):
                tensors[layer] = old.new_zeros(rows, *old.shape[1:])
                tensors[layer][: old.shape[0]] = old

    def prefill(self, slots: list[int]) -> None:
        """The next pass runs whole prompts (padded on the right) into these empty rows."""
        if slots == list(range(slots[0], slots[0] + len(slots))):
            self.slots = slice(slots[0], slots[0] + len(slots))  # a plain copy, no scatter
        else:
            self.slots = torch.tensor(slots, device=self.keys[0].device)

    def decode(self, positions: list[int]) -> None:
        """The next pass feeds one token to each of the first len(positions) rows."""
        self.slots = None
        same = all(p == positions[0] for p in positions)
        self.at = positions[0] if same else -1
        device = self.keys[0].device
        self.pos = None if same else torch.tensor(positions, device=device)
        self.index = None if same else torch.arange(len(positions), device=device)
        self.width = max(positions) + 1

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Store this pass's keys and values (B, heads, T, head_dim) where `prefill` or `decode`
        said, and return the keys and values this layer attends to."""
        keys, values = self.keys[layer], self.values[layer]
        if self.slots is not None:  # prompts in empty rows: each attends only to itself
            keys[self.slots, :, : k.shape[2]], values[self.slots, :, : k.shape[2]] = k, v
            return k, v
        rows = k.shape[0]
        if self.pos is None:  # one position for every row (always so for one reply): a slice
            at = slice(self.at, self.at + 1)
            keys[:rows, :, at], values[:rows, :, at] = k, v
        else:
            at = (self.index, slice(None), self.pos)
            keys[at], values[at] = k[:, :, 0], v[:, :, 0]
        return keys[:rows, :, : self.width], values[:rows, :, : self.width]


class Busy(Exception):
    """Too many replies waiting already: the caller should come back later."""


class Row:
    """One reply being decoded; read `finish_reason` and the token counts once it ended."""

    def __init__(
        self,
        engine: Engine,
        ids: list[int],
        emit: Emit,
        *,
        temperature: float = TEMPERATURE,
        top_k: int | None = TOP_K,
        top_p: float = 1.0,
        max_new_tokens: int = MAX_NEW_TOKENS,
        seed: int | None = None,
        stop: Iterable[str] = (),
        on_token: OnToken | None = None,
    ):
        check_sampling(temperature, top_k, top_p, max_new_tokens)
        self.ids, self.emit, self.on_token = ids[-engine.cfg.context :], emit, on_token
        self.temperature, self.top_k, self.top_p = temperature, top_k or None, top_p
        self.max_new_tokens = max_new_tokens
        # A private generator: one reply's sampling never depends on others, nor on (or
        # touches) torch's global RNG, which a training run may be using.
        self.generator = torch.Generator(device=engine.device)
        self.generator.manual_seed(seed) if seed is not None else self.generator.seed()
        self.text = TextStream(engine.tokenizer) if engine.tokenizer is not None else None
        self.stops = StopStrings(stop)
        self.prompt_tokens, self.completion_tokens = len(ids), 0
        self.finish_reason: str | None = None  # "stop", "length", or "error" (a bug of ours)
        self.cancelled = False  # set from any thread; the decoder drops the row at its next step
        self.length, self.last = 0, 0  # tokens cached, the token to feed next

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class BatchDecoder:
    """Decodes every active reply together, one token per reply per step.

    Rows join and leave between steps: the prompts that arrived since the last step are run
    together (prefill) into free rows of the cache, then every row decodes with the others
    (each at its own length: a mask hides each row's unused positions). `submit` and `cancel`
    may be called from any thread; `step` runs in one thread (the one `start` makes, or the
    caller's own). At most `max_rows` replies decode at once; up to `max_waiting` more wait for
    a free row, and `submit` raises Busy past that.
    """

    def __init__(self, engine: Engine, max_rows: int = 32, max_waiting: int = 256):
        self.engine, self.model, self.cfg = engine, engine.model, engine.cfg
        self.max_rows, self.max_waiting = max_rows, max_waiting
        self.rows: list[Row | None] = []  # by cache row; None where a row is free
        self.waiting: deque[Row] = deque()
        self.cache: KVCache | None = None  # allocated at the first prefill
        self.wake = threading.Condition()
        self.thread: threading.Thread | None = None
        self.closing = False
        self.steps = 0  # batched forward passes so far
        self.on_step: Callable[[list[Row]], None] | None = None  # sees each step's rows (tests)

    # --- any thread ----------------------------------------------------------------------------

    def submit(self, ids: list[int], emit: Emit, **options) -> Row:
        """Queue a reply to prompt `ids`; `emit` gets each text piece, then None at the end.

        Options: temperature (0 is greedy), top_k, top_p, max_new_tokens, seed (repeatable
        sampling), stop (strings that end the reply), on_token (sees each token and its logits).
        """
        row = Row(self.engine, ids, emit, **options)
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

    @torch.inference_mode()  # like no_grad, and skips autograd bookkeeping entirely
    def step(self) -> None:
        """Drop ended rows, prefill waiting ones into free rows, then decode one token each."""
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
            elif row.max_new_tokens == 0:  # nothing to write: the prompt need not even run
                self._finish(row, "length", flush=False)
            else:
                joining.append(row)
        if joining:
            self._prefill(joining)
        live = [r for r in self.rows if r is not None and not r.done]
        if all(r in joining for r in live):
            return  # only new replies, which have their first token: show it before the next
        if self.on_step is not None:
            self.on_step(live)
        # Free rows below the last active one decode a dummy token at position 0; their
        # results are thrown away, and a new reply's prefill overwrites what they cached.
        feed = [(r.last, r.length) if r is not None and not r.done else (0, 0) for r in self.rows]
        device = self.engine.device
        fed = torch.tensor(feed, device=device)  # (rows, 2): each row's token and position
        self.cache.decode([p for _, p in feed])
        mask = None
        if self.cache.pos is not None:  # rows of different lengths: each sees its own tokens
            seen = torch.arange(self.cache.width, device=device)
            mask = (seen[None, :] <= self.cache.pos[:, None])[:, None, None, :]
        logits = self.engine.decode_step(fed[:, 0], fed[:, 1], self.cache, mask)
        self.steps += 1
        greedy = logits.argmax(-1).tolist() if any(r.temperature <= 0 for r in live) else None
        for slot, row in enumerate(self.rows):
            if row is not None and not row.done:
                row.length += 1
                self._take(row, logits[slot], greedy[slot] if greedy else 0)

    def _prefill(self, joining: list[Row]) -> None:
        """Run the new prompts in one pass into free cache rows, and take their first tokens.

        Prompts are padded on the right: attention is causal, so padding after a prompt never
        changes it, and each prompt's next token comes from its own last position.
        """
        slots, free = [], iter(i for i, r in enumerate(self.rows) if r is None)
        for row in joining:
            slot = next(free, None)
            if slot is None:
                slot = len(self.rows)
                self.rows.append(None)
            self.rows[slot] = row
            slots.append(slot)
        rows_needed = len(self.rows)
        if self.cache is None or rows_needed > self.cache.rows:
            # Room to grow into, so rows joining one by one do not reallocate every time.
            rows = min(max(rows_needed, 2 * (self.cache.rows if self.cache else 0)), self.max_rows)
            if self.cache is None:
                self.cache = KVCache(self.cfg, max(rows, rows_needed), self.engine.like)
            else:
                self.cache.grow(max(rows, rows_needed))
        longest = max(len(r.ids) for r in joining)
        x = torch.tensor([r.ids + [0] * (longest - len(r.ids)) for r in joining])
        self.cache.prefill(slots)
        hidden = self.model.trunk(x.to(self.engine.device), cache=self.cache)
        # Logits at each prompt's last position only: the head is the largest matmul.
        ends = torch.tensor([len(r.ids) - 1 for r in joining], device=hidden.device)
        logits = self.model.lm_head(hidden[torch.arange(len(joining)), ends])
        for i, row in enumerate(joining):
            row.length = len(row.ids)
            self._take(row, logits[i], int(logits[i].argmax()))

    def _take(self, row: Row, logits: torch.Tensor, greedy: int) -> None:
        """Pick the row's next token and apply the stop rules to it."""
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
        if row.on_token is not None:
            row.on_token(token, logits.float())
        if row.text is not None and (piece := row.text.push(token)):
            if out := row.stops.feed(piece):
                row.emit(out)
            if row.stops.stopped:
                self._finish(row, "stop", flush=False)
                return
        # The reply's budget, and the learned positions: the model has none past the context.
        if row.completion_tokens >= row.max_new_tokens or row.length + 1 > self.cfg.context:
            self._finish(row, "length")
            return
        row.last = token

    def _finish(self, row: Row, reason: str, flush: bool = True) -> None:
        row.finish_reason = reason
        if flush and row.text is not None:
            if (piece := row.text.flush()) and (out := row.stops.feed(piece)):
                row.emit(out)
            if row.stops.stopped:
                row.finish_reason = "stop"
            elif out := row.stops.flush():
                row.emit(out)
        row.emit(None)


class Completion:
    """One reply being written (a batch of one): iterate for text pieces; then read how it ended.

    `finish_reason` is "stop" (the model closed its reply, or a stop string appeared) or
    "length" (it ran out of `max_new_tokens` or of context), as OpenAI's API spells them.
    """

    def __init__(self, engine: Engine, ids: list[int], options: dict):
        self._pieces: deque[str | None] = deque()
        self._decoder = BatchDecoder(engine, max_rows=1)
        self.row = self._decoder.submit(ids, self._pieces.append, **options)

    prompt_tokens = property(lambda self: self.row.prompt_tokens)
    completion_tokens = property(lambda self: self.row.completion_tokens)
    finish_reason = property(lambda self: self.row.finish_reason or "stop")

    def __iter__(self) -> Iterator[str]:
        while True:
            while self._pieces:
                piece = self._pieces.popleft()
                if piece is None:
                    return
                yield piece
            self._decoder.step()

    def close(self) -> None:
        """Stop the model now (a client hung up)."""
        if not self.row.done:
            self._decoder.cancel(self.row)
            self._decoder.step()

    def text(self) -> str:
        return "".join(self)


class Engine:
    """A model and its tokenizer, ready to write replies."""

    def __init__(self, model: GPT, tokenizer: Tokenizer | None, *, prepare: bool = True):
        """`prepare`: decode with a copy laid out for speed (`decode_layout`); False decodes
        with `model` itself, as it is (the trainer's samples, whose weights change between
        evals). Without a tokenizer only `tokens` works: ids in, ids out, no end token
        (benchmarks)."""
        if prepare:
            model = decode_layout(model)  # a copy on a CPU: the caller's model stays as it is
        self.model, self.tokenizer, self.cfg = model, tokenizer, model.cfg
        self.decode_step = DecodeStep(model)
        self.device = model.wte.weight.device
        self.like = model.wte.weight.detach()  # the cache's dtype and device
        self.end_id = tokenizer.token_to_id(END) if tokenizer is not None else None

    @classmethod
    def from_run(cls, run) -> Engine:
        return cls(run.model, run.tokenizer)

    def prompt(self, messages: list[dict], max_new_tokens: int = MAX_NEW_TOKENS):
        """(prompt ids, messages left out): `build_prompt` at this model's context."""
        return build_prompt(self.tokenizer, messages, self.cfg.context, max_new_tokens)

    def prompt_text(self, text: str, max_new_tokens: int = MAX_NEW_TOKENS) -> list[int]:
        """A raw prompt's ids (no chat format), its start cut off to leave room for the reply."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ids[-prompt_budget(self.cfg.context, max_new_tokens) :] or [0]

    def tokens(self, ids: list[int], **options) -> Iterator[int]:
        """New token ids one at a time for prompt `ids` (options as `BatchDecoder.submit`);
        <|im_end|> ends it, not yielded."""
        new: deque[int] = deque()
        user = options.pop("on_token", None)

        def seen(token: int, logits: torch.Tensor) -> None:
            new.append(token)
            if user is not None:
                user(token, logits)

        decoder = BatchDecoder(self, max_rows=1)
        row = decoder.submit(ids, lambda piece: None, on_token=seen, **options)
        while not row.done:
            decoder.step()
            while new:
                yield new.popleft()

    def stream(self, messages: list[dict], **options) -> Completion:
        """The reply to `messages`, as a Completion that yields text pieces.

        Options: temperature (0 is greedy: the same reply every time), top_k, top_p,
        max_new_tokens, seed (makes sampling repeatable), stop (strings that end the reply),
        on_token (sees each token with the logits it was drawn from: chat's --show-probs).
        """
        ids, _ = self.prompt(messages, options.get("max_new_tokens", MAX_NEW_TOKENS))
        return Completion(self, ids, options)

    def reply(self, messages: list[dict], **options) -> str:
        """The whole reply as one string."""
        return self.stream(messages, **options).text()

    def replies(
        self, conversations: list[list[dict]], seeds: list[int | None] | None = None, **options
    ) -> list[str]:
        """The reply to each conversation, decoded together; `seeds[i]` seeds reply i.

        Equal to `reply` one at a time when greedy; sampled replies use the same seeds and
        rules, but logits computed in a batch may differ from one row's by float rounding.
        """
        seeds = seeds if seeds is not None else [options.pop("seed", None)] * len(conversations)
        decoder = BatchDecoder(self, max_waiting=len(conversations))
        texts: list[list[str]] = [[] for _ in conversations]
        budget = options.get("max_new_tokens", MAX_NEW_TOKENS)
        rows = []
        for i, (messages, seed) in enumerate(zip(conversations, seeds, strict=True)):
            ids, _ = self.prompt(messages, budget)
            rows.append(decoder.submit(ids, _collect(texts[i]), seed=seed, **options))
        while not all(row.done for row in rows):
            decoder.step()
        return ["".join(t) for t in texts]

    def inside(self, messages: list[dict], reply: str | list[int], **options) -> Inside:
        """Each token of `reply` (its text, or the ids it was written as) to `messages`: its
        candidates and its attention over every earlier token (see `reply_inside`)."""
        return reply_inside(self, messages, reply, **options)


def _collect(pieces: list[str]) -> Emit:
    def emit(piece: str | None) -> None:
        if piece is not None:
            pieces.append(piece)

    return emit
