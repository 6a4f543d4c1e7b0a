"""Sampling and text streaming: how a next token is picked, and how tokens become shown text.

Read in the order a reply uses them: `check_sampling` turns a caller's bad option into one line,
`sample_next` picks each token from the logits, `TextStream` decodes tokens to text without
ever splitting a character (`decode_stream` is the same rule for an iterable of ids), and
`StopStrings` cuts the text at a stop string without ever showing part of one. The engine
(engine.py) applies them to every row of its batch; they know nothing of batches or caches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from guppyforge.defaults import TEMPERATURE, TOP_K
from guppyforge.errors import GuppyError


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


class TextStream:
    """Token ids in (one at a time), text pieces out, never splitting a character.

    Byte-level BPE tokens are bytes, and one character (an emoji, a Chinese character) can span
    several tokens. Decoding a half-finished character gives U+FFFD, so a piece is held back
    until the text so far no longer ends in one. Push-style, so each reply in a batch keeps its
    own; `decode_stream` is the same rule for an iterable.
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
    """Text pieces for a stream of token ids, never splitting a character (see TextStream)."""
    decoder = TextStream(tokenizer)
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
