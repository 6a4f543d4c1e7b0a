"""The ONNX decoder's KV cache: the prompt once, then one token per step, same logits as torch.

What a user would notice: generating with the exported graph costs one position per token, and
says exactly what the torch model says. The names are the ones Optimum and transformers.js feed.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from guppyforge.apps.export import export_run
from guppyforge.model.run import load_run


@pytest.fixture(scope="module")
def exported(micro_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx-kv") / "onnx"
    export_run(micro_run, "onnx", out)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    return out, session, load_run(micro_run).model


def step(session, ids: np.ndarray, mask: np.ndarray, past: list[np.ndarray] | None):
    """One run of the graph: (logits, present) for new tokens `ids` after the cache `past`."""
    caches = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    if past is None:
        past = [np.zeros((ids.shape[0], i.shape[1], 0, i.shape[3]), np.float32) for i in caches]
    feed = {"input_ids": ids, "attention_mask": mask}
    logits, *present = session.run(
        None, feed | {i.name: p for i, p in zip(caches, past, strict=True)}
    )
    return logits, present


def test_graph_has_the_names_transformers_js_feeds(exported):
    out, session, model = exported
    n = model.cfg.n_layer
    cache = [f"{i}.{kind}" for i in range(n) for kind in ("key", "value")]
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert list(inputs) == ["input_ids", "attention_mask", *(f"past_key_values.{c}" for c in cache)]
    assert [o.name for o in session.get_outputs()] == ["logits", *(f"present.{c}" for c in cache)]
    # transformers.js sizes the first, empty cache from these names: batch_size, else 0.
    head_dim = model.cfg.d_model // model.cfg.n_head
    assert inputs["past_key_values.0.key"] == [
        "batch_size", model.cfg.n_head, "past_sequence_length", head_dim
    ]  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert (config["model_type"], config["n_layer"], config["n_head"]) == (
        "gpt2",
        n,
        model.cfg.n_head,
    )
    assert (out / "generation_config.json").is_file()


@pytest.mark.parametrize("prompt", [1, 7, 40, 120])
def test_prompt_then_single_tokens_match_a_full_torch_forward(exported, prompt):
    _, session, model = exported
    context = model.cfg.context
    steps = min(8, context - prompt)  # the last position is context - 1
    x = torch.randint(
        0,
        model.cfg.vocab_size,
        (1, prompt + steps),
        generator=torch.Generator().manual_seed(prompt),
    )
    with torch.no_grad():
        full = model(x).numpy()
    ids = x.numpy()
    logits, past = step(session, ids[:, :prompt], np.ones((1, prompt), np.int64), None)
    diffs = [np.abs(logits - full[:, :prompt]).max()]
    for t in range(prompt, prompt + steps):
        logits, past = step(session, ids[:, t : t + 1], np.ones((1, t + 1), np.int64), past)
        assert past[0].shape[2] == t + 1  # the cache grew by one position, nothing recomputed
        diffs.append(np.abs(logits[:, -1] - full[:, t]).max())
    assert max(diffs) < 1e-4, diffs


def test_a_left_padded_row_says_what_it_says_alone(exported):
    # Batching prompts of different lengths: pad on the left, mask 0. The padded row's logits
    # (prompt and next steps) equal those of the same row run alone.
    _, session, model = exported
    g = torch.Generator().manual_seed(3)
    short, long = (
        torch.randint(3, model.cfg.vocab_size, (1, n), generator=g).numpy() for n in (5, 9)
    )
    alone, _ = step(session, short, np.ones((1, 5), np.int64), None)
    batch = np.concatenate([np.pad(short, ((0, 0), (4, 0))), long])
    mask = np.ones((2, 9), np.int64)
    mask[0, :4] = 0
    logits, past = step(session, batch, mask, None)
    assert np.isfinite(logits).all() and all(np.isfinite(p).all() for p in past)
    assert np.abs(logits[0, 4:] - alone[0]).max() < 1e-4
    nxt = np.array([[7], [7]], dtype=np.int64)
    logits, _ = step(session, nxt, np.concatenate([mask, np.ones((2, 1), np.int64)], 1), past)
    alone_next, _ = step(
        session, np.concatenate([short, [[7]]], 1), np.ones((1, 6), np.int64), None
    )
    assert np.abs(logits[0, -1] - alone_next[0, -1]).max() < 1e-4
