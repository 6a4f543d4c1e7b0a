"""The tokenizer (byte-level BPE, trained on the dataset) and the chat format.

A conversation is written in ChatML, the format most chat models use:

    <|im_start|>user
    are you hungry<|im_end|>
    <|im_start|>assistant
    always. is it food time.<|im_end|>

Byte-level BPE starts from the 256 byte values, so any text in any script can be encoded (no
"unknown" token), then merges frequent pairs until the vocabulary is full: a vocabulary trained
on the character's own data spends its few thousand entries on the words the character uses.

`build_prompt` writes a conversation so far as the prompt of a reply, keeping the most recent
messages that fit in the model's context beside the reply.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from guppyforge.errors import GuppyError

PAD, START, END = "<|pad|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, START, END]  # ids 0, 1, 2

# The same format as a Jinja template, for `transformers`' apply_chat_template.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def format_chat(messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The ChatML text of a conversation (what CHAT_TEMPLATE renders)."""
    text = "".join(f"{START}{m['role']}\n{m['content']}{END}\n" for m in messages)
    return text + (f"{START}assistant\n" if add_generation_prompt else "")


def chat_texts(split) -> Iterator[str]:
    """The ChatML text of each conversation of a dataset split, for training the tokenizer."""
    for batch in split.iter(batch_size=1000):
        yield from (format_chat(messages) for messages in batch["messages"])


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE tokenizer on `texts` (ChatML strings of the train split)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        # Seed with all 256 byte symbols so text the data never showed still encodes.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def save_tokenizer(tok: Tokenizer, out_dir: Path, context: int) -> list[Path]:
    """Write tokenizer.json and the config files `transformers.AutoTokenizer` reads."""
    out_dir = Path(out_dir)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": END,
        "pad_token": PAD,
        "unk_token": None,
        "additional_special_tokens": [START],
        "model_max_length": context,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {"eos_token": END, "pad_token": PAD, "additional_special_tokens": [START]}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return [out_dir / name for name in TOKENIZER_FILES]


def _byte_symbols() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte value as the printable character BPE stores it as."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    others = [b for b in range(256) if b not in kept]
    symbols = kept + list(range(256, 256 + len(others)))
    return {b: chr(c) for b, c in zip(kept + others, symbols, strict=True)}


_SYMBOL_OF = _byte_symbols()
_BYTE_OF = {c: b for b, c in _SYMBOL_OF.items()}


def token_bytes(tok: Tokenizer, token: int) -> bytes:
    """The bytes one token stands for (a character may span several tokens: see TextStream)."""
    text = tok.id_to_token(token)
    if text in SPECIAL_TOKENS:
        return text.encode()
    return bytes(_BYTE_OF[c] for c in text)


def token_from_bytes(tok: Tokenizer, data: bytes) -> int | None:
    """The token that stands for exactly `data`, or None: `token_bytes` backwards."""
    return tok.token_to_id("".join(_SYMBOL_OF[b] for b in data))


def load_tokenizer(run_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(Path(run_dir) / "tokenizer.json"))


def encode_conversations(tok: Tokenizer, conversations: list[list[dict]]):
    """Token ids and a loss mask for each conversation.

    The mask is 1 on the tokens of the character's replies (and the <|im_end|> that closes each,
    so the model learns when to stop) and 0 on the user's words and the role headers: we want a
    model that answers like the character, not one that also imitates the user.
    """
    texts, spans = [], []
    for messages in conversations:
        text, reply_spans = "", []
        for m in messages:
            head = f"{START}{m['role']}\n"
            start = len(text) + len(head)
            text += head + m["content"] + END
            if m["role"] == "assistant":
                reply_spans.append((start, len(text)))
            text += "\n"
        texts.append(text)
        spans.append(reply_spans)
    encodings = tok.encode_batch(texts, add_special_tokens=False)
    out_ids, out_mask = [], []
    for enc, reply_spans in zip(encodings, spans, strict=True):
        # Token start offsets never decrease, so each reply is one run of tokens, found by two
        # binary searches (a test per token and span took seconds on 60,000 conversations).
        starts = [s for s, _ in enc.offsets]
        mask = [0] * len(starts)
        for a, b in reply_spans:
            i, j = bisect_left(starts, a), bisect_left(starts, b)
            mask[i:j] = [1] * (j - i)
        out_ids.append(enc.ids)
        out_mask.append(mask)
    return out_ids, out_mask


def encode_prompt(tok: Tokenizer, messages: list[dict]) -> list[int]:
    """Ids of a conversation so far, ending where the character's reply should begin."""
    return tok.encode(
        format_chat(messages, add_generation_prompt=True), add_special_tokens=False
    ).ids


def _encode(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def prompt_budget(context: int, max_new_tokens: int) -> int:
    """How many prompt tokens fit beside a reply of `max_new_tokens`.

    A reply budget close to the whole context would leave no room for the question; the model
    stops at the context limit anyway, so the prompt always keeps at least half.
    """
    return max(context - max_new_tokens, context // 2)


def build_prompt(
    tokenizer: Tokenizer, messages: list[dict], context: int, max_new_tokens: int
) -> tuple[list[int], int]:
    """ChatML ids ending at the assistant header, and how many earlier messages were left out.

    The model has a fixed context (its learned positions stop there), and the reply needs room
    too, so only the most recent messages that fit in `context - max_new_tokens` are kept. The
    oldest go first: the latest turns matter most to what the character should say next.
    """
    budget = prompt_budget(context, max_new_tokens)
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


class PromptTooLong(GuppyError):
    """The messages after the last user message leave it no room in the context: no cut of
    the prompt keeps what the reply must follow (serve answers 400)."""


def _truncated(tokenizer, tail: list[dict], after: list[list[int]], header: list[int], budget: int):
    """The latest user message alone, cut from the left so its end (the question) survives."""
    head = _encode(tokenizer, f"{START}{tail[0]['role']}\n")
    close = _encode(tokenizer, f"{END}\n")
    rest = [i for p in after for i in p] + header
    room = budget - len(head) - len(close) - len(rest)
    if room < 1:
        raise PromptTooLong(
            f"the {len(rest)} tokens after the last user message do not fit the "
            f"{budget}-token prompt this model has room for. Send fewer or shorter messages "
            "after it"
        )
    return head + _encode(tokenizer, tail[0]["content"])[-room:] + close + rest
