"""Input checks with messages that say what was expected, what came in, and how to fix it."""

from __future__ import annotations

import torch
from torch import Tensor

RANGE_TOLERANCE = 1e-4


def check_images(x: object, shape: tuple[int, ...]) -> Tensor:
    """Check that `x` is a batch of images (B, *shape), floating point, finite, in [-1, 1].

    Raises ValueError naming the problem; returns `x` unchanged.
    """
    expected = f"(B, {', '.join(map(str, shape))})"
    if not isinstance(x, Tensor):
        raise ValueError(f"expected images as a torch.Tensor of shape {expected}, got {type(x).__name__}")
    if x.dim() != len(shape) + 1:
        raise ValueError(
            f"expected images of shape {expected}, got a {x.dim()}-d tensor of shape {tuple(x.shape)}"
            + (" (add a batch dimension with x.unsqueeze(0))" if x.dim() == len(shape) else "")
        )
    if x.shape[1] != shape[0]:
        raise ValueError(f"expected {shape[0]} channel(s) {expected}, got {x.shape[1]} in shape {tuple(x.shape)}")
    if tuple(x.shape[2:]) != tuple(shape[1:]):
        size = "x".join(map(str, shape[1:]))
        raise ValueError(f"expected images of size {size} {expected}, got shape {tuple(x.shape)}")
    check_features(x)
    low, high = torch.aminmax(x.detach()) if x.numel() else (torch.tensor(0.0), torch.tensor(0.0))
    if low < -1 - RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ValueError(
            f"expected pixel values in [-1, 1], got values in [{low.item():.4g}, {high.item():.4g}]; "
            "map [0, 1] images with 2 * x - 1 and [0, 255] bytes with x / 127.5 - 1"
        )
    return x


def check_features(x: Tensor) -> Tensor:
    """Check that `x` is a non-empty batch of floating-point values without NaN or inf."""
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"expected a batch of at least one sample, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected a floating-point tensor, got dtype {x.dtype}; convert with x.float()")
    if not torch.isfinite(x.detach()).all():
        raise ValueError("input contains NaN or inf values; check the data pipeline before the model")
    return x


def check_count(value: object, name: str, minimum: int = 1) -> int:
    """Check that `value` is an integer >= minimum (steps, iterations, batch sizes, ...)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value
