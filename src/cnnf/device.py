"""Where a model computes: "auto" (a CUDA GPU when torch sees one, else the CPU), "cpu", "cuda"
or "cuda:N". Library code creates its tensors on its inputs' device; this module only turns a
user's setting into a `torch.device`, with one-line errors."""

from __future__ import annotations

import re

import torch

DEVICE_FORMS = "auto, cpu, cuda or cuda:N"


def check_device_name(name: object) -> str:
    """`name` if it has one of the forms auto | cpu | cuda | cuda:N, else a ValueError."""
    if not isinstance(name, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise ValueError(f"device must be {DEVICE_FORMS}, got {name!r}")
    return name


def resolve_device(name: str) -> torch.device:
    """The torch.device a setting names; "auto" is CUDA where available. A CUDA device that is
    not there is a ValueError that says so and names the fix."""
    if check_device_name(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: this torch ({torch.__version__}) sees no CUDA GPU; use --device cpu or auto")
        if (device.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA GPU(s) visible (cuda:0..)")
    return device


def device_of(model: torch.nn.Module) -> torch.device:
    """The device of a model's parameters."""
    return next(model.parameters()).device
