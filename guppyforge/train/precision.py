"""Which number format to train in, per device: fp32, bf16 or fp16 (with a GradScaler).

Lower precision halves the bytes moved and, on hardware with native support, doubles the math
throughput. The weights themselves stay fp32 ("mixed precision"): autocast runs the matmuls in
the low format and keeps the sensitive reductions (softmax, LayerNorm, the loss) in fp32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from guppyforge.errors import GuppyError
from guppyforge.train.config import PRECISIONS

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """A resolved choice: the format, the device it runs on, and why it was picked."""

    name: str  # fp32 | bf16 | fp16
    device_type: str  # cpu | cuda | mps
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES.get(self.name, torch.float32)

    @property
    def needs_scaler(self) -> bool:
        # fp16 has 5 exponent bits: small gradients underflow to zero. The GradScaler multiplies
        # the loss by a large factor before backward and divides the gradients after, skipping
        # any step whose gradients overflowed. bf16 has fp32's exponent range, so it needs none.
        return self.name == "fp16"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context to run forward passes (and the loss) in."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """A GradScaler that is a no-op unless this precision needs one."""
        return torch.amp.GradScaler(self.device_type, enabled=self.needs_scaler)

    def describe(self) -> str:
        return f"precision: {self.name} on {self.device_type} ({self.reason})"


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU computes bf16 in hardware (AVX512_BF16 or AMX).

    Without it, bf16 on a CPU is emulated through fp32 and is slower than plain fp32.
    `torch.backends.cpu.get_cpu_capability()` only says "AVX512", not whether bf16 is in it,
    so the Linux flags are read; elsewhere the answer is "no" (fp32, always correct).
    """
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cuda_capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def pick_precision(device: torch.device, requested: str = "auto") -> Precision:
    """Resolve `--precision` for `device`; `auto` picks the fastest format that trains well."""
    if requested not in PRECISIONS:
        raise GuppyError(
            f"--precision: unknown '{requested}'. Use one of: {', '.join(PRECISIONS)}."
        )
    kind = device.type
    if requested != "auto":
        return Precision(requested, kind, "asked for")
    if kind == "cuda":
        major, minor = cuda_capability(device)
        if major >= 8:
            return Precision("bf16", kind, f"compute capability {major}.{minor} has bf16 cores")
        # A T4 (7.5) reports bf16 as "supported" but emulates it slowly; its tensor cores are
        # fp16, so fp16 with loss scaling is the fast path there.
        return Precision("fp16", kind, f"compute capability {major}.{minor}: fp16 tensor cores")
    if kind == "cpu" and cpu_has_native_bf16():
        return Precision("bf16", kind, "CPU has native bf16 (avx512_bf16/amx)")
    return Precision("fp32", kind, "no fast low-precision format on this device")
