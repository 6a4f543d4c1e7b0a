"""`Engine.inside`: each reply token's candidates and where it looked, from one forward pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from guppyforge.model.engine import Engine
from guppyforge.model.run import load_run
from guppyforge.model.tokenizer import token_bytes, token_from_bytes

HUNGRY = [{"role": "user", "content": "are you hungry"}]


@pytest.fixture(scope="module")
def engine(micro_run):
    return Engine.from_run(load_run(Path(micro_run)))


def greedy(engine, messages):
    """The greedy reply's tokens, with the log-softmax of the logits each was drawn from."""
    seen = []
    engine.stream(
        messages,
        temperature=0,
        on_token=lambda t, logits: seen.append((t, torch.log_softmax(logits, -1))),
    ).text()
    return seen


def test_a_greedy_reply_is_the_top_candidate_at_every_token(engine):
    seen = greedy(engine, HUNGRY)
    inside = engine.inside(HUNGRY, [t for t, _ in seen])
    assert [t.token for t in inside.tokens] == [t for t, _ in seen]
    for (token, decoded), t in zip(seen, inside.tokens, strict=True):
        assert t.top[0][0] == token  # greedy draws the likeliest
        # The whole reply in one pass gives the decoder's numbers, up to float rounding (the
        # KV cache adds one position at a time; measured max 1.0e-5 on this fixture).
        assert torch.allclose(t.logprobs, decoded, atol=1e-4)
        assert t.logprob == pytest.approx(float(decoded[token]), abs=1e-4)
        assert torch.exp(t.logprobs).sum() == pytest.approx(1.0, abs=1e-5)


def test_attention_covers_every_earlier_token_and_sums_to_one_per_head(engine):
    inside = engine.inside(HUNGRY, "worms? yes.")
    prompt, _ = engine.prompt(HUNGRY)
    assert inside.ids[: inside.start] == prompt
    cfg = engine.cfg
    for t in inside.tokens:
        # The position that chose the token sees the whole prompt and the reply before it.
        assert t.attention.shape == (cfg.n_layer, cfg.n_head, t.position)
        assert torch.allclose(t.attention.sum(-1), torch.ones(cfg.n_layer, cfg.n_head), atol=1e-5)
        assert (t.attention >= 0).all()


def test_attention_weights_are_the_ones_the_model_mixes_values_with(engine):
    """Recomputed weights times the values give the layer's own attention output."""
    inside = engine.inside(HUNGRY, "worms? yes.")
    model, block = engine.model, engine.model.h[0]
    C, H = engine.cfg.d_model, engine.cfg.n_head
    ids = torch.tensor([inside.ids])
    captured = {}
    hook = block.attn.c_proj.register_forward_hook(lambda m, a, out: captured.setdefault("y", a[0]))
    with torch.no_grad():
        x = block.ln_1(model.wte(ids) + model.wpe(torch.arange(ids.shape[1])[None]))
        try:
            block.attn(x)  # the heads' outputs, before c_proj mixes them
        finally:
            hook.remove()
        v = block.attn.c_attn(x)[0, :, 2 * C :].view(-1, H, C // H).transpose(0, 1)
    t = inside.tokens[-1]
    # The position that chose the token is t.position - 1; its heads mix the values before it.
    mixed = (t.attention[0][:, None, :] @ v[:, : t.position]).squeeze(1)
    full = captured["y"][0, t.position - 1].view(H, C // H)
    assert torch.allclose(mixed, full, atol=1e-5)


def test_a_reply_past_the_context_is_cut_there(engine):
    inside = engine.inside(HUNGRY, "yes. " * 200)
    assert len(inside.ids) == engine.cfg.context


def test_token_bytes_round_trip_every_token(engine):
    tok = engine.tokenizer
    for i in range(tok.get_vocab_size()):
        data = token_bytes(tok, i)
        assert token_from_bytes(tok, data) == i
    text = "worms? yes."
    ids = tok.encode(text, add_special_tokens=False).ids
    assert b"".join(token_bytes(tok, i) for i in ids).decode() == text


def test_chat_show_attention_names_the_most_attended_tokens(micro_run, engine):
    from click.testing import CliRunner

    from guppyforge.apps.cli import cli

    args = ["chat", str(micro_run), "--prompt", "are you hungry", "--temperature", "0"]
    result = CliRunner().invoke(cli, [*args, "--show-attention", "--max-new-tokens", "5"])
    assert result.exit_code == 0, result.output
    legend, reply, *lines = result.output.splitlines()
    assert "attended to most" in legend
    tok = engine.tokenizer
    inside = engine.inside(HUNGRY, reply, max_new_tokens=5)
    cfg = engine.cfg
    assert len(lines) == len(inside.tokens) * (1 + cfg.n_layer)
    for i, t in enumerate(inside.tokens):
        block = lines[i * (1 + cfg.n_layer) : (i + 1) * (1 + cfg.n_layer)]
        assert block[0].strip() == repr(tok.decode([t.token]))
        for layer, line in enumerate(block[1:]):
            summed = t.attention[layer].sum(0) / cfg.n_head
            top = torch.topk(summed, 3)
            want = "  ".join(
                f"{tok.decode([inside.ids[j]], skip_special_tokens=False)!r} {w:.0%}"
                for w, j in zip(top.values.tolist(), top.indices.tolist(), strict=True)
            )
            assert line == f"    layer {layer}: {want}"
