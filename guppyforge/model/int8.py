"""Int8 weights for fast decoding on a CPU (`guppyforge chat --int8`).

Decoding one token multiplies a single vector by every weight matrix, so its speed is how fast
the weights stream from memory, not arithmetic: the guppy-9m model's 33 MiB of fp32 weights do
not fit this kind of CPU's cache. Int8 weights are a quarter of the bytes. Each output row keeps
its own scale (per-channel), which keeps greedy replies the same as fp32 far more often than one
scale per matrix; activations are quantized on the fly, per token.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from guppyforge.errors import GuppyError


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` whose Linear layers (the head too) hold int8 weights; CPU only."""
    try:
        with warnings.catch_warnings():
            # torch.ao's eager quantization is deprecated in favour of torchao, but it is the
            # only int8 path built into the torch versions this package supports.
            warnings.simplefilter("ignore")
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, inplace=False)
    except (ImportError, RuntimeError, AttributeError) as e:
        raise GuppyError(
            f"--int8: this torch build ({torch.__version__}) cannot quantize ({e}). Drop --int8."
        ) from None
