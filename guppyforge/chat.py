"""Talking to a trained character: prompt building, streamed replies, and the `chat` REPL.

`serve` uses the same three functions, so a reply is the same whether it is typed in a terminal
or requested over HTTP:

    build_prompt(tokenizer, messages, context, max_new_tokens) -> (ids, dropped)
    stream_reply(run, messages, temperature=..., seed=...)      -> text pieces as they come
    reply(run, messages, ...)                                    -> the whole reply
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import click
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from guppyforge.runs import Run
from guppyforge.tokenizer import END, START, format_chat

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


def decode_stream(tokenizer: Tokenizer, token_ids: Iterable[int]) -> Iterator[str]:
    """Text pieces for a stream of token ids, never splitting a character.

    Byte-level BPE tokens are bytes, and one character (an emoji, a Chinese character) can span
    several tokens. Decoding a half-finished character gives U+FFFD, so we wait until the text so
    far no longer ends in one before yielding the new part.
    """
    ids: list[int] = []
    shown = ""
    for token in token_ids:
        ids.append(token)
        text = tokenizer.decode(ids)
        if text.endswith("\ufffd") or len(text) == len(shown):
            continue
        yield text[len(shown) :]
        shown = text
    text = tokenizer.decode(ids)
    if len(text) > len(shown):
        yield text[len(shown) :]  # bytes that never completed a character: show what there is


def prepare_for_decoding(model: torch.nn.Module) -> None:
    """Store each weight matrix input-major (GPT-2's own Conv1D layout), once, on the CPU.

    Decoding one token multiplies a single vector by every weight matrix, so its speed is how
    fast the weights stream from memory. Stored input-major, the CPU matmul kernel reads them
    in long contiguous runs (1.3x faster per token on the 2-core dev box). Values, shapes and
    saved files are unchanged; logits move only by float rounding (another summation order).
    """
    if getattr(model, "_decode_ready", False) or model.wte.weight.device.type != "cpu":
        return
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.data = p.data.t().contiguous().t()
    model._decode_ready = True


def stream_reply(
    run: Run,
    messages: list[dict],
    *,
    temperature: float = 0.7,
    top_k: int | None = 50,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    seed: int | None = None,
    on_token: OnToken | None = None,
) -> Iterator[str]:
    """Yield the character's reply to `messages` in pieces, as the model writes it.

    Generation uses the model's KV cache and stops at <|im_end|>. Temperature 0 is greedy (the
    same reply every time); otherwise `seed` makes the sampling repeatable. `on_token`, if given,
    sees each token id with the logits it was drawn from (the `--show-probs` view).
    """
    model = run.model
    prepare_for_decoding(model)
    ids, _ = build_prompt(run.tokenizer, messages, model.cfg.context, max_new_tokens)
    # A private generator: sampling never touches (or depends on) torch's global RNG state.
    generator = torch.Generator(device=model.wte.weight.device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    tokens = model.generate(
        ids,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k or None,
        top_p=top_p,
        stop_ids=(run.tokenizer.token_to_id(END),),
        generator=generator,
    )
    if on_token is not None:
        tokens = _watched(model, tokens, on_token)
    yield from decode_stream(run.tokenizer, tokens)


def _watched(model: torch.nn.Module, tokens: Iterator[int], on_token: OnToken) -> Iterator[int]:
    """Pass tokens through, showing `on_token` the logits each one was sampled from."""
    seen: list[torch.Tensor] = []
    # A forward hook sees every logits tensor `generate` computes, without changing generate.
    hook = model.register_forward_hook(lambda mod, inp, out: seen.append(out[0, -1].float()))
    try:
        for token in tokens:
            on_token(token, seen[-1])
            yield token
    finally:
        hook.remove()


def reply(run: Run, messages: list[dict], **options) -> str:
    """The whole reply as one string (`stream_reply`'s pieces joined)."""
    return "".join(stream_reply(run, messages, **options))


def candidates(
    logits: torch.Tensor, temperature: float, n: int = 5
) -> list[tuple[int, float, float]]:
    """The `n` likeliest next tokens as (id, p at temperature 1, p at `temperature`).

    Temperature divides the logits before the softmax: below 1 the gaps between them grow, so
    the likely tokens take even more of the probability; above 1 the gaps shrink and the tail
    gets more. Temperature 0 is the limit: all the probability on the single likeliest token.
    """
    plain = F.softmax(logits.float(), dim=-1)
    if temperature > 0:
        scaled = F.softmax(logits.float() / temperature, dim=-1)
    else:
        scaled = torch.zeros_like(plain)
        scaled[plain.argmax()] = 1.0
    top = torch.topk(plain, min(n, plain.numel())).indices.tolist()
    return [(i, float(plain[i]), float(scaled[i])) for i in top]


def format_candidates(
    tokenizer: Tokenizer, token: int, logits: torch.Tensor, temperature: float, n: int = 5
) -> str:
    """A small table: the top candidates before and after temperature, the picked one marked."""
    rows = candidates(logits, temperature, n)
    if token not in [i for i, _, _ in rows]:
        rows += [r for r in candidates(logits, temperature, logits.numel()) if r[0] == token]
    label = f"T={temperature:g}" + (" (greedy)" if temperature <= 0 else "")
    lines = [f"    {'T=1':>7}  {label:>13}  candidate"]
    for i, p, q in rows:
        mark = "  <- picked" if i == token else ""
        lines.append(f"    {p:7.3f}  {q:13.3f}  {tokenizer.decode([i])!r}{mark}")
    return "\n".join(lines)


PROBS_LEGEND = (
    "For each token: the 5 likeliest candidates, their probability at temperature 1 and at "
    "T={t:g} (sampling then keeps the top-k/top-p of that second column)."
)


def repl(run: Run, options: dict, show_probs: bool = False) -> None:
    """Chat in the terminal until /quit, Ctrl-D or Ctrl-C."""
    name = (run.config.get("persona") or {}).get("name") or run.path.name
    context = run.model.cfg.context
    click.echo(f"Chatting with {name} ({run.path}). Commands: /reset starts over, /quit leaves.")
    if show_probs:
        click.echo(PROBS_LEGEND.format(t=options["temperature"]))
    with contextlib.suppress(ImportError):  # arrow keys and history for input(), where available
        import readline  # noqa: F401
    history: list[dict] = []
    try:
        while True:
            try:
                text = input("you> ").strip()
            except EOFError:  # Ctrl-D
                click.echo()
                break
            if text in ("/quit", "/exit"):
                break
            if text == "/reset":
                history = []
                click.echo("(a fresh conversation: earlier turns are forgotten)")
                continue
            if not text:
                continue
            history.append({"role": "user", "content": text})
            _, dropped = build_prompt(run.tokenizer, history, context, options["max_new_tokens"])
            if dropped:
                # The model only sees `context` tokens, so the oldest turns must go.
                history = history[dropped:]
                click.echo(f"({dropped} older messages no longer fit in {context} tokens: dropped)")
            text = _answer(run, history, options, f"{name}> ", show_probs)
            history.append({"role": "assistant", "content": text})
    except KeyboardInterrupt:
        click.echo()
    click.echo("bye")


def _answer(run: Run, history: list[dict], options: dict, prefix: str, show_probs: bool) -> str:
    """Print the reply as it streams (or, with --show-probs, a table per token) and return it."""
    if not show_probs:
        click.echo(prefix, nl=False)
        pieces = []
        for piece in stream_reply(run, history, **options):
            pieces.append(piece)
            click.echo(piece, nl=False)
        click.echo()
        return "".join(pieces)

    def show(token: int, logits: torch.Tensor) -> None:
        click.echo(f"  next token {run.tokenizer.decode([token])!r}")
        click.echo(format_candidates(run.tokenizer, token, logits, options["temperature"]))

    text = reply(run, history, on_token=show, **options)
    click.echo(f"{prefix}{text}")
    return text


def chat(
    run_dir, prompt: str | None, device: str, show_probs: bool, int8: bool = False, **options
) -> None:
    """`guppyforge chat`: one reply to `prompt` (just the reply, for scripts), or the REPL."""
    from pathlib import Path

    from guppyforge.errors import GuppyError
    from guppyforge.runs import load_run, pick_device

    if not Path(run_dir).is_dir():
        raise GuppyError(f"{run_dir}: no such run folder. Train one with `guppyforge train`.")
    run = load_run(run_dir, device=str(pick_device(device)))
    if int8:
        from guppyforge.quantize import quantize_int8

        if run.model.wte.weight.device.type != "cpu":
            raise GuppyError("--int8: int8 weights run on the CPU only. Add --device cpu.")
        run.model = quantize_int8(run.model)
    if prompt is None:
        repl(run, options, show_probs)
    else:
        if show_probs:
            click.echo(PROBS_LEGEND.format(t=options["temperature"]))
        _answer(run, [{"role": "user", "content": prompt}], options, "", show_probs)
