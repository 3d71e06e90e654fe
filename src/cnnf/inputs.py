"""Input checks with messages that say what was expected, what came in, and how to fix it."""

from __future__ import annotations

from collections.abc import Sequence

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


def check_model_settings(iterations: int, residual: float, relu_mixing: float) -> None:
    """A CNNF's N >= 0, r in (0, 1] and AdaReLU mixing m in [0, 1)."""
    if not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
    if not 0 < residual <= 1:
        raise ValueError(f"residual must be in (0, 1], got {residual!r}")
    if not 0 <= relu_mixing < 1:
        raise ValueError(f"relu_mixing must be in [0, 1), got {relu_mixing!r}")


def check_shape(h: Tensor, shape: Sequence[int], what: str) -> None:
    """h is a batch (B, *shape) of `what`."""
    if tuple(h.shape[1:]) != tuple(shape):
        raise ValueError(f"expected {what} of shape (B, {', '.join(map(str, shape))}), got {tuple(h.shape)}")


def check_feedback_inputs(g: Tensor, latents: Sequence[Tensor | None], layers: Sequence, stop: int, classes: int) -> None:
    """Logits-space g (B, classes) and one latent per layer, present at every adaptive layer from `stop` up."""
    if g.dim() != 2 or g.shape[1] != classes:
        raise ValueError(f"expected logits of shape (B, {classes}), got {tuple(g.shape)}")
    if len(latents) != len(layers):
        raise ValueError(f"latents must have one entry per layer ({len(layers)}), got {len(latents)}")
    for i in range(stop, len(layers)):
        if layers[i].adaptive and latents[i] is None:
            raise ValueError(f"no latent for layer {i}; the latents come from a pass that started above it")
