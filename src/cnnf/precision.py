"""Numeric precision of training, evaluation and attacks: "fp32" (the default) or "bf16", which
runs the model under `torch.autocast(device_type, dtype=torch.bfloat16)` on CPU and CUDA.

Weights, optimiser state, losses and attack arithmetic stay float32 under "bf16": autocast
computes convolutions and matrix products in bfloat16; losses take logits and maps cast back
with `full`, and attacks step and project in float32 (docs/DESIGN.md section 9). "fp32" adds
no autocast region, so runs are bit-identical to code without this setting.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import torch
from torch import Tensor

PRECISIONS = ("fp32", "bf16")


def check_precision(name: object) -> str:
    """`name` if it is one of PRECISIONS, else a ValueError that names them."""
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    return name


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """A context that runs the model at `precision` on `device`: torch.autocast to bfloat16 for
    "bf16", nothing for "fp32"."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    if device_type == "cpu" and not native_bf16_cpu():
        _warn_emulated_bf16()
    return torch.autocast(device_type, dtype=torch.bfloat16)


@functools.cache
def _warn_emulated_bf16() -> None:
    """Warn once per process that bf16 is emulated on this CPU."""
    warnings.warn("this CPU has no native bfloat16 arithmetic (AVX512-BF16 or AMX): bf16 runs about 10 times "
                  "slower than fp32 here (benchmarks/README.md); use fp32", stacklevel=3)


def native_bf16_cpu() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX tiles); without it
    autocast emulates bf16 and is slower than fp32 (an AVX2 AMD EPYC: 7 to 13 times)."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def full(t: Tensor) -> Tensor:
    """`t` in float32 if it is of a 16-bit float type, else unchanged (float32 and float64 stay)."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t
