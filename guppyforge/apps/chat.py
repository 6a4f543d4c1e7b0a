"""`guppyforge chat`: the terminal REPL, one-shot replies, and the `--show-probs` and
`--show-attention` lessons.

All generation goes through the inference engine (model/engine.py); this module only talks to
the person at the keyboard.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from guppyforge.errors import GuppyError
from guppyforge.files import printable
from guppyforge.model.engine import Engine
from guppyforge.model.run import load_run, pick_device


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


def format_attention(tokenizer: Tokenizer, inside, n: int = 3) -> str:
    """Per reply token and layer: the `n` earlier tokens its position attended to most.

    The weights of a layer's heads are summed (each head's sum to 1) and shown as a share of
    the layer's attention; the prompt's tokens count as earlier tokens too.
    """
    lines = []
    for t in inside.tokens:
        lines.append(f"  {tokenizer.decode([t.token])!r}")
        heads = t.attention.shape[1]
        for layer, weights in enumerate(t.attention.sum(dim=1)):  # (layers, earlier tokens)
            top = torch.topk(weights, min(n, weights.numel()))
            seen = "  ".join(
                f"{tokenizer.decode([inside.ids[i]], skip_special_tokens=False)!r} {w / heads:.0%}"
                for w, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
            )
            lines.append(f"    layer {layer}: {seen}")
    return "\n".join(lines)


ATTENTION_LEGEND = (
    "After the reply, for each token: per layer, the 3 earlier tokens (the prompt's too) its "
    "position attended to most, summed over the layer's heads, as a share of its attention."
)

PROBS_LEGEND = (
    "For each token: the 5 likeliest candidates, their probability at temperature 1 and at "
    "T={t:g} (sampling then keeps the top-k/top-p of that second column)."
)


def repl(
    engine: Engine,
    name: str,
    where: Path,
    options: dict,
    show_probs: bool = False,
    trace: bool = False,
    show_attention: bool = False,
) -> None:
    """Chat in the terminal until /quit, Ctrl-D or Ctrl-C."""
    context = engine.cfg.context
    name = printable(name)  # the model's text and the persona's name may hold escape codes
    print(
        f"Chatting with {name} ({where}). Commands: /why traces the last reply to the persona, "
        "/reset starts over, /quit leaves."
    )
    if show_probs:
        print(PROBS_LEGEND.format(t=options["temperature"]))
    if show_attention:
        print(ATTENTION_LEGEND)
    with contextlib.suppress(ImportError):  # arrow keys and history for input(), where available
        import readline  # noqa: F401
    history: list[dict] = []
    tracer = Tracer(where)
    record: list = []  # the last reply's tokens and their top candidates, for /why
    try:
        while True:
            try:
                text = input("you> ").strip()
            except EOFError:  # Ctrl-D
                print()
                break
            if text in ("/quit", "/exit"):
                break
            if text == "/why":
                last = history[-1]["content"] if history else None
                print(tracer.explain(last, record, engine.tokenizer.decode))
                continue
            if text == "/reset":
                history = []
                print("(a fresh conversation: earlier turns are forgotten)")
                continue
            if not text:
                continue
            history.append({"role": "user", "content": text})
            _, dropped = engine.prompt(history, options["max_new_tokens"])
            if dropped:
                # The model only sees `context` tokens, so the oldest turns must go.
                history = history[dropped:]
                print(f"({dropped} older messages no longer fit in {context} tokens: dropped)")
            record = []
            text = answer(engine, history, options, f"{name}> ", show_probs, record, show_attention)
            history.append({"role": "assistant", "content": text})
            if trace:
                print(tracer.short(text))
    except KeyboardInterrupt:
        print()
    print("bye")


def answer(
    engine: Engine,
    history: list[dict],
    options: dict,
    prefix: str,
    show_probs: bool,
    record: list | None = None,
    show_attention: bool = False,
):
    """Print the reply as it streams (or, with --show-probs, a table per token) and return it.

    `record`, when given, receives each token with its top candidates (for `/why`). With
    `show_attention`, the reply is followed by where each of its tokens looked
    (`Engine.inside`, run on the finished reply)."""
    ids: list[int] = []

    def keep(token: int, logits: torch.Tensor) -> None:
        ids.append(token)
        if record is not None:
            record.append((token, candidates(logits, options["temperature"])))

    if not show_probs:
        print(prefix, end="", flush=True)
        pieces = []
        on_token = keep if record is not None or show_attention else None
        for piece in engine.stream(history, on_token=on_token, **options):
            pieces.append(piece)
            print(printable(piece), end="", flush=True)
        print()
        text = "".join(pieces)
    else:

        def show(token: int, logits: torch.Tensor) -> None:
            keep(token, logits)
            print(f"  next token {engine.tokenizer.decode([token])!r}")
            print(format_candidates(engine.tokenizer, token, logits, options["temperature"]))

        text = engine.stream(history, on_token=show, **options).text()
        print(f"{prefix}{printable(text)}")
    if show_attention and ids:
        inside = engine.inside(history, ids, max_new_tokens=options["max_new_tokens"])
        print(printable(format_attention(engine.tokenizer, inside)))
    return text


class Tracer:
    """The run's trace index, loaded on the first `/why` or `--trace` (the first may build it)."""

    def __init__(self, run_dir: Path):
        self.run_dir, self._index = run_dir, None

    def index(self):
        from guppyforge.evaluate.trace import load_index

        if self._index is None:
            self._index = load_index(self.run_dir)
        return self._index

    def short(self, text: str) -> str:
        from guppyforge.apps.text import format_short

        return format_short(self.index().trace(text))

    def explain(self, text: str | None, record: list, decode) -> str:
        """`/why`: the last reply's trace, then where its likeliest next tokens come from."""
        from guppyforge.apps.text import format_choices, format_trace

        if text is None:
            return "(no reply yet: /why explains the last reply)"
        try:
            index = self.index()
        except GuppyError as e:
            return f"(cannot trace: {e})"
        parts = [format_trace(index.trace(text))]
        if record:
            parts.append(format_choices(index, decode, record))
        return "\n\n".join(parts)


def chat(
    run_dir,
    prompt: str | None,
    device: str,
    show_probs: bool,
    trace: bool = False,
    show_attention: bool = False,
    **options,
) -> None:
    """`guppyforge chat`: one reply to `prompt` (just the reply, for scripts), or the REPL."""
    if not Path(run_dir).is_dir():
        raise GuppyError(f"{run_dir}: no such run folder. Train one with `guppyforge train`.")
    run = load_run(run_dir, device=str(pick_device(device)))
    engine = Engine.from_run(run)
    if prompt is None:
        name = (run.config.get("persona") or {}).get("name") or run.path.name
        repl(engine, name, run.path, options, show_probs, trace, show_attention)
    else:
        if show_probs:
            print(PROBS_LEGEND.format(t=options["temperature"]))
        if show_attention:
            print(ATTENTION_LEGEND)
        messages = [{"role": "user", "content": prompt}]
        text = answer(engine, messages, options, "", show_probs, None, show_attention)
        if trace:
            from guppyforge.apps.text import format_trace
            from guppyforge.evaluate.trace import why

            print(format_trace(why(run.path, text)))
