"""The inference engine: the one place where a trained model turns a conversation into a reply.

chat, eval and serve all call it, so a reply is the same whether it is typed in a terminal,
scored, or requested over HTTP:

    engine = Engine(model, tokenizer)              # int8=True: int8 weights on a CPU
    engine.reply(messages, temperature=0)          # the whole reply
    completion = engine.stream(messages, seed=1)  # text pieces as the model writes them
    for piece in completion: ...                   # then .finish_reason, .completion_tokens

What happens inside, in order: build the ChatML prompt that fits the context (`build_prompt`),
run it once through the model to fill the KV cache (prefill), then feed one token at a time,
picking each next token from the logits (`sample_next`) until a stop rule fires, and decode the
tokens to text without ever splitting a character (`decode_stream`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from guppyforge.defaults import MAX_NEW_TOKENS, TEMPERATURE, TOP_K
from guppyforge.errors import GuppyError
from guppyforge.model.gpt import GPT, KVCache
from guppyforge.model.int8 import quantize_int8
from guppyforge.model.tokenizer import END, START, format_chat

OnToken = Callable[[int, torch.Tensor], None]  # (token id, the logits it was drawn from)


def _encode(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def build_prompt(
    tokenizer: Tokenizer, messages: list[dict], context: int, max_new_tokens: int
) -> tuple[list[int], int]:
    """ChatML ids ending at the assistant header, and how many earlier messages were left out.

    The model has a fixed context (its learned positions stop there), and the reply needs room
    too, so only the most recent messages that fit in `context - max_new_tokens` are kept. The
    oldest go first: the latest turns matter most to what the character should say next.
    """
    # A reply budget close to the whole context would leave no room for the question; the
    # model stops at the context limit anyway, so the prompt always keeps at least half.
    budget = max(context - max_new_tokens, context // 2)
    # Each message ends in the special <|im_end|>, so the tokenizer never merges across
    # messages: encoding them one by one gives the same ids as encoding the whole text.
    pieces = [_encode(tokenizer, format_chat([m])) for m in messages]
    header = _encode(tokenizer, f"{START}assistant\n")
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    anchor = users[-1] if users else max(len(messages) - 1, 0)
    kept = sum(len(p) for p in pieces[anchor:]) + len(header)
    if kept > budget:
        return _truncated(
            tokenizer, messages[anchor:], pieces[anchor + 1 :], header, budget
        ), anchor
    start = anchor
    while start > 0 and kept + len(pieces[start - 1]) <= budget:
        start -= 1
        kept += len(pieces[start])
    # A reply without the question it answers would confuse the model: once anything is left
    # out, the kept window starts at a user message.
    while 0 < start < anchor and messages[start]["role"] != "user":
        start += 1
    ids = [i for p in pieces[start:] for i in p] + header
    return ids, start


def _truncated(tokenizer, tail: list[dict], after: list[list[int]], header: list[int], budget: int):
    """The latest user message alone, cut from the left so its end (the question) survives."""
    head = _encode(tokenizer, f"{START}{tail[0]['role']}\n")
    close = _encode(tokenizer, f"{END}\n")
    rest = [i for p in after for i in p] + header
    room = max(budget - len(head) - len(close) - len(rest), 1)
    return head + _encode(tokenizer, tail[0]["content"])[-room:] + close + rest


def check_sampling(temperature, top_k, top_p, max_new_tokens) -> None:
    """Sampling options a caller got wrong (NaN, infinity, out of range): one line each."""
    numbers = {"temperature": temperature, "top_p": top_p}
    for name, value in numbers.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise GuppyError(f"{name} {value!r}: not a number. Use e.g. 0.7 (temperature), 0.9")
    if not 0 <= temperature < float("inf"):
        raise GuppyError(f"temperature {temperature}: must be finite and at least 0 (0: greedy)")
    if not 0 < top_p <= 1:
        raise GuppyError(f"top_p {top_p}: must be above 0 and at most 1")
    for name, value in {"top_k": top_k or 0, "max_new_tokens": max_new_tokens}.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise GuppyError(f"{name} {value!r}: must be a whole number, at least 0")


def sample_next(
    logits: torch.Tensor,
    temperature: float = TEMPERATURE,
    top_k: int | None = TOP_K,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> int:
    """Pick the next token from one position's logits.

    Temperature divides the logits before the softmax: below 1 it sharpens the distribution
    (the likely tokens get likelier), above 1 it flattens it. Temperature 0 means "always take
    the most likely token" (greedy), which makes a reply reproducible.
    """
    if temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits.float() / temperature
    k = top_k if top_k and 0 < top_k < logits.numel() else logits.numel()
    # Keep only the k most likely tokens: cuts off the long tail of nonsense. topk returns them
    # sorted, so the rest of the work is on k numbers rather than the whole vocabulary.
    values, ids = torch.topk(logits, k)
    probs = F.softmax(values, dim=-1)
    if top_p < 1.0:
        # Nucleus sampling: keep the smallest set of tokens whose probabilities add up to top_p.
        probs = probs.masked_fill(probs.cumsum(0) - probs > top_p, 0.0)
    return int(ids[torch.multinomial(probs, 1, generator=generator)])


class TextDecoder:
    """Token ids in (one at a time), text pieces out, never splitting a character.

    Byte-level BPE tokens are bytes, and one character (an emoji, a Chinese character) can span
    several tokens. Decoding a half-finished character gives U+FFFD, so a piece is held back
    until the text so far no longer ends in one. Push-style, so the batched decoder can keep
    one per reply; `decode_stream` is the same rule for an iterable.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer, self.ids, self.shown = tokenizer, [], ""

    def push(self, token: int) -> str:
        """The new text this token completes ("" while a character is unfinished)."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd") or len(text) == len(self.shown):
            return ""
        piece, self.shown = text[len(self.shown) :], text
        return piece

    def flush(self) -> str:
        """Bytes that never completed a character: show what there is."""
        text = self.tokenizer.decode(self.ids)
        piece = text[len(self.shown) :] if len(text) > len(self.shown) else ""
        self.shown = text if piece else self.shown
        return piece


def decode_stream(tokenizer: Tokenizer, token_ids: Iterable[int]) -> Iterator[str]:
    """Text pieces for a stream of token ids, never splitting a character (see TextDecoder)."""
    decoder = TextDecoder(tokenizer)
    for token in token_ids:
        if piece := decoder.push(token):
            yield piece
    if piece := decoder.flush():
        yield piece


class StopStrings:
    """Cuts streamed text at the first stop string, even one split across pieces.

    Text that could be the start of a stop string is held back until the next piece shows
    whether it is, so a reader never receives part of a stop string.
    """

    def __init__(self, stops: Iterable[str] = ()):
        self.stops, self.pending, self.stopped = [s for s in stops if s], "", False

    def feed(self, piece: str) -> str:
        """The text now safe to show; sets `stopped` once a stop string is seen."""
        if not self.stops:
            return piece
        self.pending += piece
        cut = min((i for s in self.stops if (i := self.pending.find(s)) >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self.pending = self.pending[:cut], ""
            return out
        # Keep the longest tail that is a prefix of some stop string.
        keep = max(
            (n for s in self.stops for n in range(1, len(s)) if self.pending.endswith(s[:n])),
            default=0,
        )
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(out) :]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def decode_layout(model: GPT) -> None:
    """Store each weight matrix input-major (GPT-2's own Conv1D layout), on the CPU.

    Decoding one token multiplies a single vector by every weight matrix, so its speed is how
    fast the weights stream from memory. Stored input-major, the CPU matmul kernel reads them
    in long contiguous runs (1.3x faster per token on a 2-core CPU). Values, shapes and saved
    files are unchanged; logits move only by float rounding (another summation order). Doing
    it twice changes nothing, so it needs no flag.
    """
    if model.wte.weight.device.type != "cpu":
        return
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.data = p.data.t().contiguous().t()


class Completion:
    """One reply being written: iterate for text pieces; then read how it ended.

    `finish_reason` is "stop" (the model closed its reply, or a stop string appeared) or
    "length" (it ran out of `max_new_tokens` or of context), as OpenAI's API spells them.
    """

    def __init__(self, engine: Engine, ids: list[int], options: dict, on_token: OnToken | None):
        self.prompt_tokens, self.completion_tokens = len(ids), 0
        self.finish_reason = "stop"
        self._stops = StopStrings(options.pop("stop", ()))
        self._tokens = engine.tokens(ids, self, on_token=on_token, **options)
        self._pieces = decode_stream(engine.tokenizer, self._tokens)

    def __iter__(self) -> Iterator[str]:
        for piece in self._pieces:
            if out := self._stops.feed(piece):
                yield out
            if self._stops.stopped:
                self.finish_reason = "stop"
                self.close()
                return
        if out := self._stops.flush():
            yield out

    def close(self) -> None:
        """Stop the model now (a client hung up, or a stop string appeared)."""
        self._pieces.close()
        self._tokens.close()

    def text(self) -> str:
        return "".join(self)


class Engine:
    """A model and its tokenizer, ready to write replies."""

    def __init__(
        self, model: GPT, tokenizer: Tokenizer | None, *, int8: bool = False, prepare: bool = True
    ):
        """`int8`: decode with an int8 copy of the weights (CPU only). `prepare`: re-lay the
        weights out for fast decoding, in place (False while the model is still training).
        Without a tokenizer only `tokens` works: ids in, ids out, no end token (benchmarks)."""
        model.eval()
        if int8:
            if model.wte.weight.device.type != "cpu":
                raise GuppyError("--int8: int8 weights run on the CPU only. Add --device cpu.")
            model = quantize_int8(model)
        elif prepare:
            decode_layout(model)
        self.model, self.tokenizer, self.cfg = model, tokenizer, model.cfg
        self.device = model.wte.weight.device
        self.end_id = tokenizer.token_to_id(END) if tokenizer is not None else None

    @classmethod
    def from_run(cls, run, *, int8: bool = False) -> Engine:
        return cls(run.model, run.tokenizer, int8=int8)

    def prompt(self, messages: list[dict], max_new_tokens: int = MAX_NEW_TOKENS):
        """(prompt ids, messages left out): `build_prompt` at this model's context."""
        return build_prompt(self.tokenizer, messages, self.cfg.context, max_new_tokens)

    @torch.inference_mode()  # like no_grad, and skips autograd bookkeeping entirely
    def tokens(
        self,
        ids: list[int],
        completion: Completion | None = None,
        *,
        temperature: float = TEMPERATURE,
        top_k: int | None = TOP_K,
        top_p: float = 1.0,
        max_new_tokens: int = MAX_NEW_TOKENS,
        seed: int | None = None,
        on_token: OnToken | None = None,
    ) -> Iterator[int]:
        """New token ids one at a time, using the KV cache; <|im_end|> ends it (not yielded).

        The prompt is run once (prefill); after that each step feeds only the newest token.
        Generation also ends at `max_new_tokens` or at the context limit (learned positions end
        there), which `completion.finish_reason` records as "length". `on_token` sees each
        token with the logits it was drawn from (chat's --show-probs).
        """
        check_sampling(temperature, top_k, top_p, max_new_tokens)
        # A private generator: sampling never touches (or depends on) torch's global RNG.
        generator = torch.Generator(device=self.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        cache = KVCache(self.cfg.n_layer)
        x = torch.tensor([ids[-self.cfg.context :]], device=self.device)
        for step in range(max_new_tokens + 1):
            if step == max_new_tokens or len(cache) + x.shape[1] > self.cfg.context:
                if completion is not None:
                    completion.finish_reason = "length"
                return
            logits = self.model(x, cache=cache)[0][0, -1]
            token = sample_next(logits, temperature, top_k or None, top_p, generator)
            if token == self.end_id:
                return
            if completion is not None:
                completion.completion_tokens += 1
            if on_token is not None:
                on_token(token, logits.float())
            yield token
            x = torch.tensor([[token]], device=self.device)

    def stream(
        self, messages: list[dict], *, on_token: OnToken | None = None, **options
    ) -> Completion:
        """The reply to `messages`, as a Completion that yields text pieces.

        Options: temperature (0 is greedy: the same reply every time), top_k, top_p,
        max_new_tokens, seed (makes sampling repeatable), stop (strings that end the reply).
        """
        ids, _ = self.prompt(messages, options.get("max_new_tokens", MAX_NEW_TOKENS))
        return Completion(self, ids, dict(options), on_token)

    def reply(self, messages: list[dict], **options) -> str:
        """The whole reply as one string."""
        return self.stream(messages, **options).text()
