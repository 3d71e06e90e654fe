"""FGSM: the fast gradient sign method (Goodfellow et al., 2015), as used in the CNN-F paper."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from cnnf.attacks.spec import AttackSpec
from cnnf.attacks.threat import ModelFn, check_batch, check_eps, eval_mode, input_gradient, project, radius


def fgsm(model_fn: ModelFn, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """Untargeted L-infinity FGSM on the cross-entropy loss: one step of size 2 * eps.

        x_adv = clip_[-1, 1]( x + 2 eps * sign(grad_x CE(model_fn(x), y)) )

    Threat model: ||x_adv - x||_inf <= 2 * eps in [-1, 1] units, i.e. eps in [0, 1] image
    units (the paper's convention); x_adv in [-1, 1].

    Args:
        model_fn: images (B, C, H, W) in [-1, 1] -> logits (B, classes); e.g.
            `gradient_source(model, "first")`. An nn.Module runs in eval mode (restored after).
        x: clean images (B, C, H, W) in [-1, 1].
        y: labels (B,) int64.
        eps: budget in [0, 1] image units.
    Returns:
        Detached adversarial images, shape of x.

    Example:
        >>> x_adv = fgsm(gradient_source(model, "first"), x, y, eps=0.1)
    """
    x, y = check_batch(x, y)
    eps = check_eps(eps)
    if eps == 0:
        return project(x, x, eps)
    with eval_mode(model_fn):
        grad, _ = input_gradient(model_fn, x, y)
    return project(x + radius(eps) * grad.sign(), x, eps)


class FGSMSpec(AttackSpec):
    """FGSM as a registry entry: one deterministic step of 2 * eps."""

    step_rule: ClassVar[str] = "fgsm"

    def run(self, model_fn: ModelFn, x: Tensor, y: Tensor, eps: float,
            generator: torch.Generator | None = None, early_stop: bool = False) -> Tensor:
        return fgsm(model_fn, x, y, eps)

    def _step_size(self, eps: float) -> float:
        return radius(eps)
