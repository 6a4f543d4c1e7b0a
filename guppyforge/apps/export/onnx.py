"""Export a run as ONNX: model.onnx (fp32) and, with --int8, model.int8.onnx.

The graph is the plain forward pass, `input_ids (batch, sequence) int64 -> logits (batch,
sequence, vocab) float32`, with both axes dynamic. Positions (0 .. sequence-1) and the causal
mask are computed inside the graph, so a caller passes token ids and nothing else. There is no
KV cache input: to generate, feed the whole sequence again each step (cheap at this size, and the
graph stays one that any ONNX runtime can run). Sequences must start at position 0 and be at
most `context` tokens long; pad batches on the right. onnx_io.json says all of this for tools.
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

from guppyforge.errors import GuppyError
from guppyforge.model.gpt import GPT
from guppyforge.model.run import Run
from guppyforge.model.tokenizer import CHAT_TEMPLATE, END, PAD, save_tokenizer

# Opset 18 has LayerNormalization as one op, and runtimes from early 2023 on (onnxruntime
# 1.14+) run it; torch 2.13's default, 20, would shut out older ones for nothing we use.
OPSET = 18


class LogitsOnly(nn.Module):
    """The model as the ONNX graph sees it: token ids in, logits out."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # An explicit causal mask, rather than the model's own `is_causal` shortcut: that flag
        # is a Python bool that depends on the sequence length, and the exporter cannot keep a
        # bool symbolic, so it would bake in the example's length. A mask built from the
        # (symbolic) length stays dynamic.
        n = input_ids.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=input_ids.device).tril()
        return self.model(input_ids, attn_mask=causal)[0]


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
    """Write `model` to `path` with dynamic batch and sequence axes."""
    _require("onnx")
    _require("onnxscript")
    # The dynamo exporter (torch.export), not the legacy TorchScript one: the legacy exporter
    # is deprecated since torch 2.9 and may go away; this one is where fixes land.
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", max=model.cfg.context)
    # Sizes 0 and 1 are special-cased by torch.export (it would fix the axis), hence 2 x 8.
    example = torch.zeros(2, 8, dtype=torch.long, device=model.wte.weight.device)
    with _quiet("torch.onnx"):
        program = torch.onnx.export(
            LogitsOnly(model).eval(),
            (example,),
            input_names=["input_ids"],
            output_names=["logits"],
            dynamic_shapes={"input_ids": {0: batch, 1: sequence}},
            opset_version=OPSET,
            dynamo=True,
            external_data=False,  # a 9M model is ~35 MB: one self-contained file is easier to share
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
    return {
        "format": "guppyforge-onnx",
        "version": 1,
        "models": {"fp32": "model.onnx", **({"int8": "model.int8.onnx"} if int8 else {})},
        "opset": OPSET,
        "inputs": [
            {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
        ],
        "outputs": [
            {"name": "logits", "dtype": "float32", "shape": ["batch", "sequence", cfg.vocab_size]},
        ],
        "max_sequence": cfg.context,
        "positions": "computed inside the graph as 0..sequence-1; pad batches on the right",
        "attention": "causal, computed inside the graph; no KV cache: feed the whole sequence",
        "tokenizer": "tokenizer.json",
        "chat_template": CHAT_TEMPLATE,
        "eos_token_id": tok.token_to_id(END),
        "pad_token_id": tok.token_to_id(PAD),
    }


def export_onnx(run: Run, out: Path, *, int8: bool = False) -> list[Path]:
    """Write model.onnx (and model.int8.onnx), onnx_io.json and the tokenizer files."""
    files = [out / "model.onnx"]
    export_model_onnx(run.model, files[0])
    if int8:
        files.append(out / "model.int8.onnx")
        quantize_int8(files[0], files[-1])
    files.append(out / "onnx_io.json")
    files[-1].write_text(json.dumps(io_description(run, int8), indent=2) + "\n")
    return files + save_tokenizer(run.tokenizer, out, run.model.cfg.context)
