"""Inside a finished reply: what the model could have said at each token, and where it looked.

For each token of a reply, the model chose from a probability distribution over the whole
vocabulary, computed at the position just before it; and each attention head of each layer,
at that position, mixed the tokens before it with weights that sum to 1. `look_inside` runs
the conversation and its reply through the model once (no cache: every position at once) and
returns both, per reply token:

    inside = engine.inside(messages, reply)   # reply_inside: the prompt, then look_inside
    inside.tokens[0].top          # [(token id, log-probability at temperature 1), ...]
    inside.tokens[0].attention    # (layers, heads, positions before the token): rows sum to 1

The attention weights are recomputed from each layer's queries and keys, split into heads as
the model splits them (`CausalSelfAttention.heads`), by the model's own written-out formula
(`attention_weights` in decode.py: softmax(q k^T / sqrt(d)) under the causal mask), while the
blocks run as they always do (`forward_with_attention`, which the web export's inside graph
traces too): the logits are the model's own, and gpt.py needs no switch for this.
`top_logprobs` is serve's per-token `logprobs`, from the logits the decoder drew each token
from, and each token's candidates here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from guppyforge.defaults import MAX_NEW_TOKENS
from guppyforge.model.decode import attention_weights

TOP_LOGPROBS = 20  # the most candidates a caller may ask for, as OpenAI's API allows


def top_logprobs(logits: torch.Tensor, token: int, k: int) -> tuple[float, list[tuple[int, float]]]:
    """(log p of `token`, the `k` likeliest tokens with theirs), at temperature 1.

    What OpenAI's `logprobs` report: log_softmax of the raw logits, before any temperature,
    top-k or top-p changes what sampling draws from.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    values, ids = torch.topk(logp, min(k, logp.numel())) if k > 0 else (logp[:0], logp[:0])
    return float(logp[token]), list(zip(ids.tolist(), values.tolist(), strict=True))


@dataclass
class TokenInside:
    """One reply token: the distribution it was drawn from and what its position attended to."""

    token: int
    position: int  # where it sits in prompt + reply; it was predicted at position - 1
    logprob: float  # log p(token) at temperature 1
    logprobs: torch.Tensor  # (vocab,) log-probabilities at temperature 1 of every candidate
    top: list[tuple[int, float]]  # the likeliest candidates, (id, log-probability)
    attention: torch.Tensor  # (layers, heads, position): weights over the tokens before it


@dataclass
class Inside:
    ids: list[int]  # prompt + reply
    start: int  # the index in `ids` of the reply's first token
    tokens: list[TokenInside]


def reply_inside(
    engine,
    messages: list[dict],
    reply: str | list[int],
    max_new_tokens: int = MAX_NEW_TOKENS,
    top: int = 10,
) -> Inside:
    """`Engine.inside`: `look_inside` after the prompt `engine.stream` builds for `messages`
    with the same `max_new_tokens`; a reply given as text is encoded, and cut where the
    context ends."""
    ids, _ = engine.prompt(messages, max_new_tokens)
    if isinstance(reply, str):
        reply = engine.tokenizer.encode(reply, add_special_tokens=False).ids
    return look_inside(engine.model, ids, reply[: engine.cfg.context - len(ids)], top)


@torch.no_grad()  # not inference_mode: its tensors would refuse later autograd use
def look_inside(model, prompt_ids: list[int], reply_ids: list[int], top: int = 10) -> Inside:
    """Candidates and attention for each token of `reply_ids`, written after `prompt_ids`."""
    ids = list(prompt_ids) + list(reply_ids)
    context = model.cfg.context
    if len(ids) > context:
        raise ValueError(f"prompt + reply is {len(ids)} tokens; the model sees at most {context}")
    device = model.wte.weight.device
    logits, attention = forward_with_attention(model, torch.tensor([ids], device=device))
    logits, attention = logits[0].float(), attention[:, 0]
    start = len(prompt_ids)
    tokens = []
    for position in range(start, len(ids)):
        token, chose = ids[position], logits[position - 1]  # the position that chose the token
        logprob, candidates = top_logprobs(chose, token, top)
        tokens.append(
            TokenInside(
                token=token,
                position=position,
                logprob=logprob,
                logprobs=F.log_softmax(chose, dim=-1),
                top=candidates,
                attention=attention[:, :, position - 1, :position],
            )
        )
    return Inside(ids=ids, start=start, tokens=tokens)


def forward_with_attention(model, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits (B, T, vocab) of token ids `idx` (B, T), and every layer's attention
    weights (layers, B, heads, T, T), row t over the positions up to t.

    GPT.forward's steps, with each layer's weights recomputed on the way from its query and
    key projection (the model's own split into heads and its written-out attention formula;
    one more projection per layer than the block runs, which the inside view can afford). A
    walk rather than hooks on the model: a server's decoder may be running the same model in
    another thread, and a hook would see its passes too. The ONNX export of the inside view
    traces this too.
    """
    T = idx.shape[1]
    positions = torch.arange(T, device=idx.device)[None]
    # An explicit causal mask rather than SDPA's is_causal flag, whose value depends on T: an
    # exporter tracing this would have to bake it in.
    causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()[None, None]
    x = model.wte(idx) + model.wpe(positions)
    weights = []
    for block in model.h:
        q, k, _ = block.attn.heads(block.attn.c_attn(block.ln_1(x)).float())
        weights.append(attention_weights(q, k, causal))
        x = block(x, causal)
    return model.lm_head(model.ln_f(x)), torch.stack(weights)
