"""Export a run as ONNX: model.onnx (fp32) and, with --int8, model.int8.onnx.

The graph is a decoder with a KV cache, in the names Optimum and transformers.js use for GPT-2:

    inputs   input_ids                    (batch_size, sequence_length)        int64
             attention_mask               (batch_size, past + sequence_length) int64, 1 = real
             past_key_values.{i}.key/value (batch_size, heads, past, head_dim)  float32
    outputs  logits                       (batch_size, sequence_length, vocab) float32
             present.{i}.key/value        (batch_size, heads, past + sequence_length, head_dim)

Generating: run the prompt once with empty pasts (past = 0), then feed one token at a time with
the previous step's `present.*` as `past_key_values.*` and the mask grown by one, so a token
costs one position rather than the whole prefix. Positions (from the mask, so left padding
works) and the causal mask are computed inside the graph. Positions stop at `context`.
config.json and generation_config.json (GPT-2's) tell Optimum and transformers.js the shape.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn

from guppyforge.apps.export.hf import generation_config, gpt2_config
from guppyforge.errors import GuppyError
from guppyforge.model.gpt import GPT
from guppyforge.model.inside import forward_with_attention
from guppyforge.model.run import Run
from guppyforge.model.tokenizer import CHAT_TEMPLATE, END, PAD, save_tokenizer

# Opset 18 has LayerNormalization as one op, and runtimes from early 2023 on (onnxruntime
# 1.14+) run it; torch 2.13's default, 20, would shut out older ones for nothing we use.
OPSET = 18


class OnnxDecodeStep(nn.Module):
    """The model as the ONNX graph sees it: new token ids, the mask and the cache in; logits and
    the grown cache out. The cache is a flat tuple (key 0, value 0, key 1, ...) because ONNX
    inputs and outputs are flat lists of tensors."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, past: tuple[torch.Tensor, ...]):
        new, total = input_ids.shape[1], attention_mask.shape[1]
        # Positions count the real tokens before each one, as transformers' GPT-2 does, so a
        # left-padded row starts at 0 at its first real token (pads clamp to 0; never read).
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, total - new :]
        # An explicit mask rather than the model's `is_causal` shortcut: that flag is a Python
        # bool that depends on the lengths, which the exporter would bake in. Each new token
        # sees the past and the new tokens up to itself, minus padding; it always sees itself,
        # so a pad row attends to something and stays finite (an all-masked row gives NaN,
        # and NaN in a pad's key would spread to every row through the next layer's softmax).
        row = torch.arange(new, device=input_ids.device)[:, None] + (total - new)
        col = torch.arange(total, device=input_ids.device)[None, :]
        allowed = (col <= row) & ((attention_mask[:, None, None, :] > 0) | (col == row))
        self.present = list(past)
        logits = self.model(input_ids, positions=positions, attn_mask=allowed, cache=self)
        return (logits, *self.present)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """The model's cache call: the graph's cache is past in, past + new out (no state)."""
        keys = self.present[2 * layer] = torch.cat([self.present[2 * layer], k], dim=2)
        values = self.present[2 * layer + 1] = torch.cat([self.present[2 * layer + 1], v], dim=2)
        return keys, values


class OnnxInside(nn.Module):
    """The chat page's inside view as a graph: a whole sequence in (no cache), its logits and
    every layer's attention weights out, as `look_inside` computes them (model/inside.py)."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return forward_with_attention(self.model, input_ids)


def cache_names(n_layer: int, prefix: str) -> list[str]:
    """past_key_values.0.key, past_key_values.0.value, ... (or present.*): the flat order."""
    return [f"{prefix}.{i}.{kind}" for i in range(n_layer) for kind in ("key", "value")]


def _require(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise GuppyError(
            f"--to onnx needs the '{module}' package: pip install onnx onnxscript onnxruntime"
        ) from None


@contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """Hide the exporters' own chatter (log lines and torch-internal FutureWarnings).

    The dynamo exporter logs that torchvision's ops are not registered, and onnxruntime's
    quantiser logs a "consider pre-processing" advice meant for conv nets. Neither is
    actionable by a guppyforge user; real errors still raise.
    """
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def export_model_onnx(model: GPT, path: Path) -> None:
    """Write `model` to `path` as a decoder with a KV cache, every length dynamic."""
    _require("onnx")
    _require("onnxscript")
    cfg = model.cfg
    # The dynamo exporter (torch.export), not the legacy TorchScript one: the legacy exporter
    # is deprecated since torch 2.9 and may go away; this one is where fixes land. The axis
    # names become the graph's: transformers.js sizes an empty cache from them, reading
    # "batch_size" as the batch and any other name (past_sequence_length) as 0.
    dim = torch.export.Dim
    batch = dim("batch_size")
    new = dim("sequence_length", min=1, max=cfg.context)
    past = dim("past_sequence_length", min=0, max=cfg.context - 1)
    total = dim("total_sequence_length", min=1, max=cfg.context)
    # Sizes 0 and 1 are special-cased by torch.export (it would fix the axis), hence 2, 5, 3.
    device = model.wte.weight.device
    head_dim = cfg.d_model // cfg.n_head
    example = (
        torch.zeros(2, 5, dtype=torch.long, device=device),
        torch.ones(2, 3 + 5, dtype=torch.long, device=device),
        tuple(
            torch.zeros(2, cfg.n_head, 3, head_dim, device=device) for _ in range(2 * cfg.n_layer)
        ),
    )
    with _quiet("torch.onnx"), warnings.catch_warnings():
        # The 2L cache inputs share one name per axis, on purpose; the exporter says so.
        warnings.filterwarnings("ignore", "# The axis name", UserWarning)
        program = torch.onnx.export(
            OnnxDecodeStep(model).eval(),
            example,
            input_names=[
                "input_ids",
                "attention_mask",
                *cache_names(cfg.n_layer, "past_key_values"),
            ],
            output_names=["logits", *cache_names(cfg.n_layer, "present")],
            dynamic_shapes={
                "input_ids": {0: batch, 1: new},
                "attention_mask": {0: batch, 1: total},
                "past": tuple({0: batch, 2: past} for _ in range(2 * cfg.n_layer)),
            },
            opset_version=OPSET,
            dynamo=True,
            external_data=False,  # a 9M model is ~35 MB: one self-contained file is easier to share
            verbose=False,
        )
    program.save(str(path))


def export_inside_onnx(model: GPT, path: Path) -> None:
    """Write the inside view's graph to `path`: input_ids (batch_size, sequence_length) in;
    logits (batch_size, sequence_length, vocab) and attentions (layers, batch_size, heads,
    sequence_length, sequence_length) out, row t of each head over positions up to t."""
    _require("onnx")
    _require("onnxscript")
    cfg = model.cfg
    dim = torch.export.Dim
    shapes = {"input_ids": {0: dim("batch_size"), 1: dim("sequence_length", max=cfg.context)}}
    example = (torch.zeros(2, 5, dtype=torch.long, device=model.wte.weight.device),)
    with _quiet("torch.onnx"):
        program = torch.onnx.export(
            OnnxInside(model).eval(),
            example,
            input_names=["input_ids"],
            output_names=["logits", "attentions"],
            dynamic_shapes=shapes,
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    program.save(str(path))


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation: weights stored as int8, activations quantised on the fly.

    No calibration data is needed. Only the blocks' matmuls are quantised (they hold most of
    the weights). The token table stays fp32: it is both the input embedding and the output
    head, so rounding it to int8 hurts twice. Measured on the test model: quantising it too
    makes the file 28 % smaller but drops top-1 agreement with fp32 from 99.6 % to 93.6 %.
    """
    _require("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet("root"):  # onnxruntime logs its advice through the root logger
        quantize_dynamic(
            str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"]
        )


def io_description(run: Run, int8: bool) -> dict:
    """onnx_io.json: what goes in, what comes out, and the rules a caller must follow."""
    tok, cfg = run.tokenizer, run.model.cfg
    cache = ["batch_size", cfg.n_head, "past_sequence_length", cfg.d_model // cfg.n_head]
    grown = [*cache[:2], "past_sequence_length + sequence_length", cache[3]]
    return {
        "format": "guppyforge-onnx",
        "version": 2,
        "models": {"fp32": "model.onnx", **({"int8": "model.int8.onnx"} if int8 else {})},
        "opset": OPSET,
        "inputs": [
            {"name": "input_ids", "dtype": "int64", "shape": ["batch_size", "sequence_length"]},
            {
                "name": "attention_mask",
                "dtype": "int64",
                "shape": ["batch_size", "past_sequence_length + sequence_length"],
            },
            *(
                {"name": n, "dtype": "float32", "shape": cache}
                for n in cache_names(cfg.n_layer, "past_key_values")
            ),
        ],
        "outputs": [
            {
                "name": "logits",
                "dtype": "float32",
                "shape": ["batch_size", "sequence_length", cfg.vocab_size],
            },
            *(
                {"name": n, "dtype": "float32", "shape": grown}
                for n in cache_names(cfg.n_layer, "present")
            ),
        ],
        "max_sequence": cfg.context,
        "positions": "computed inside the graph from attention_mask (count of real tokens before "
        "each); past + sequence_length must stay <= max_sequence",
        "attention": "causal, computed inside the graph. KV cache: start with past_sequence_length "
        "0 (empty tensors), then feed each step's present.* back as past_key_values.* with only "
        "the new tokens and the whole mask; pad on the left (mask 0) when batching",
        "tokenizer": "tokenizer.json",
        "chat_template": CHAT_TEMPLATE,
        "eos_token_id": tok.token_to_id(END),
        "pad_token_id": tok.token_to_id(PAD),
    }


def export_onnx(run: Run, out: Path, *, int8: bool = False) -> list[Path]:
    """Write model.onnx (and model.int8.onnx), onnx_io.json, config files and the tokenizer."""
    files = [out / "model.onnx"]
    export_model_onnx(run.model, files[0])
    if int8:
        files.append(out / "model.int8.onnx")
        quantize_int8(files[0], files[-1])
    # GPT-2's config files: Optimum and transformers.js read the shape (layers, heads) and the
    # token that ends a reply from them.
    for name, content in [
        ("onnx_io.json", io_description(run, int8)),
        ("config.json", gpt2_config(run)),
        ("generation_config.json", generation_config(run)),
    ]:
        files.append(out / name)
        files[-1].write_text(json.dumps(content, indent=2) + "\n")
    return files + save_tokenizer(run.tokenizer, out, run.model.cfg.context)
