"""The tokenizer (byte-level BPE, trained on the dataset) and the chat format.

A conversation is written in ChatML, the format most chat models use:

    <|im_start|>user
    are you hungry<|im_end|>
    <|im_start|>assistant
    always. is it food time.<|im_end|>

Byte-level BPE starts from the 256 byte values, so any text in any script can be encoded (no
"unknown" token), then merges frequent pairs until the vocabulary is full: a vocabulary trained
on the character's own data spends its few thousand entries on the words the character uses.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

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
