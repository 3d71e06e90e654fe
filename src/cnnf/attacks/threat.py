"""The threat model shared by every attack: L-infinity ball, valid pixel range, input checks.

Units. Images live in [-1, 1] (the model's range). Budgets `eps` are always given in [0, 1]
image units, as the paper reports them (appendix B.1: "the values of eps that we report in
this paper are half of their actual values"); the L-infinity radius in [-1, 1] units is
therefore ``2 * eps``. Step sizes, SPSA's delta and learning rate are in [-1, 1] units.

`project` is the single place where adversarial images are pulled back into the threat model;
every attack in `cnnf.attacks` ends each step with it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from numbers import Real

import torch
from torch import Tensor, nn

from cnnf.inputs import check_images

ModelFn = Callable[[Tensor], Tensor]
"""Images (B, C, H, W) in [-1, 1] -> logits (B, classes)."""

PIXEL_MIN, PIXEL_MAX = -1.0, 1.0


def radius(eps: float) -> float:
    """L-infinity radius in [-1, 1] units of a budget `eps` in [0, 1] units (= 2 * eps)."""
    return 2.0 * check_eps(eps)


def check_eps(eps: object) -> float:
    """Check that `eps` is a real number in [0, 1] ([0, 1] image units); return it as float."""
    if isinstance(eps, Tensor) and eps.numel() == 1:
        eps = eps.item()
    if isinstance(eps, bool) or not isinstance(eps, Real) or not math.isfinite(eps):
        raise ValueError(f"eps must be a finite number in [0, 1] ([0, 1] image units), got {eps!r}")
    if not 0 <= eps <= 1:
        hint = " (eps is in [0, 1] image units, e.g. 0.3 for MNIST; not 0-255)" if eps > 1 else ""
        raise ValueError(f"eps must be in [0, 1] ([0, 1] image units), got {eps!r}{hint}")
    return float(eps)


def check_positive(value: object, name: str) -> float:
    """Check that `value` is a finite number > 0 (step sizes, delta, learning rate)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0 ([-1, 1] image units), got {value!r}")
    return float(value)


def check_batch(x: object, y: object) -> tuple[Tensor, Tensor]:
    """Check images x (B, C, H, W) in [-1, 1], B >= 1, and labels y (B,) of integer class indices."""
    if not isinstance(x, Tensor):
        raise ValueError(f"expected images as a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"expected images of shape (B, C, H, W), got a {x.dim()}-d tensor of shape {tuple(x.shape)}"
            + (" (add a batch dimension with x.unsqueeze(0))" if x.dim() == 3 else "")
        )
    if len(x) == 0:
        raise ValueError("expected at least one image, got an empty batch (0 images)")
    check_images(x, tuple(x.shape[1:]))
    if not isinstance(y, Tensor):
        raise ValueError(f"expected labels as a torch.Tensor of shape ({len(x)},), got {type(y).__name__}")
    if y.dim() != 1 or len(y) != len(x):
        raise ValueError(f"expected labels of shape ({len(x)},) (one class index per image), got {tuple(y.shape)}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(f"expected integer class indices (torch.long), got dtype {y.dtype}; convert with y.long()")
    if y.min() < 0:
        raise ValueError(f"labels must be class indices >= 0, got a minimum of {y.min().item()}")
    return x.detach(), y.detach().long()


def project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Pull `x_adv` back into the threat model around the clean images `x`.

    Clips each pixel to [x - 2 eps, x + 2 eps] (the L-infinity ball of radius 2 * eps in
    [-1, 1] units, i.e. eps in [0, 1] units) and then to the valid range [-1, 1].

    Args:
        x_adv: candidate images, same shape as x.
        x: clean images (B, C, H, W) in [-1, 1].
        eps: budget in [0, 1] image units.
    Returns:
        Detached tensor with ||x_adv - x||_inf <= 2 * eps and values in [-1, 1].

    Example:
        >>> x = torch.zeros(1, 1, 2, 2)
        >>> project(torch.full_like(x, 0.9), x, eps=0.1)
        tensor([[[[0.2000, 0.2000],
                  [0.2000, 0.2000]]]])
    """
    if x_adv.shape != x.shape:
        raise ValueError(f"x_adv has shape {tuple(x_adv.shape)} but the clean images have {tuple(x.shape)}")
    r = radius(eps)
    x = x.detach()
    if r == 0:
        return x.clamp(PIXEL_MIN, PIXEL_MAX)
    x_adv = torch.minimum(torch.maximum(x_adv.detach(), x - r), x + r)
    return x_adv.clamp(PIXEL_MIN, PIXEL_MAX)


def input_gradient(model_fn: ModelFn, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Gradient of the summed cross-entropy w.r.t. the images only, and the logits at x.

    Uses torch.autograd.grad with inputs=[x], so no parameter's .grad is touched. The sum (not
    the mean) keeps each sample's gradient independent of the batch size.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model_fn(x)
        check_logits(logits, len(x))
        losses = nn.functional.cross_entropy(logits, y, reduction="none")
        (grad,) = torch.autograd.grad(losses.sum(), [x])
    return grad.detach(), logits.detach()


@torch.no_grad()
def predict(model_fn: ModelFn, x: Tensor, max_batch: int | None = None) -> Tensor:
    """Logits of `model_fn` on x without a graph, in chunks of at most `max_batch` images."""
    if max_batch is None or len(x) <= max_batch:
        logits = model_fn(x)
    else:
        logits = torch.cat([model_fn(chunk) for chunk in x.split(max_batch)])
    check_logits(logits, len(x))
    return logits


def check_logits(logits: object, n: int) -> None:
    if not isinstance(logits, Tensor) or logits.dim() != 2 or len(logits) != n:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"model_fn must return logits of shape ({n}, classes), got {shape}")


@contextlib.contextmanager
def eval_mode(model_fn: object) -> Iterator[None]:
    """Run `model_fn` in eval mode if it is an nn.Module, restoring every submodule's mode after."""
    if not isinstance(model_fn, nn.Module):
        yield
        return
    modes = [(m, m.training) for m in model_fn.modules()]
    model_fn.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.train(training)
