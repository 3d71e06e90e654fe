"""SPSA: a gradient-free attack (Uesato et al., "Adversarial Risk and the Dangers of Evaluating
Against Weak Attacks", ICML 2018), built on Spall's simultaneous perturbation estimate.

It only queries logits, so gradient masking (e.g. weak BPDA gradients through the unrolled
CNN-F) cannot hide adversarial examples from it; docs/DESIGN.md section 6 requires one such attack.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnf.attacks.spec import AttackSpec
from cnnf.attacks.threat import (
    ModelFn,
    check_batch,
    check_eps,
    check_positive,
    eval_mode,
    predict,
    project,
)
from cnnf.inputs import check_count

LOSSES = ("margin", "ce")
UPDATES = ("adam", "sign")
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def spsa(
    model_fn: ModelFn,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int = 100,
    samples: int = 128,
    delta: float = 0.02,
    lr: float = 0.02,
    generator: torch.Generator | None = None,
    *,
    loss: str = "margin",
    update: str = "adam",
    max_batch: int = 256,
) -> Tensor:
    """Untargeted L-infinity SPSA attack (gradient-free), all images at once.

    Each step estimates the gradient of the loss L at x_t from `samples` random directions
    v in {-1, +1}^d (antithetic pairs, 2 * samples queries per image):

        g = mean_v [ (L(x_t + delta v) - L(x_t - delta v)) / (2 delta) ] v

    then ascends it with Adam (Uesato et al.) or a signed step, and projects to the threat
    model. L is the margin max_{j != y} z_j - z_y (default; > 0 means misclassified) or the
    cross-entropy. A sample stops as soon as it is misclassified and keeps that image;
    the others return their last iterate. Queries are clipped to [-1, 1].

    Threat model: ||x_adv - x||_inf <= 2 * eps in [-1, 1] units (eps in [0, 1] image units);
    x_adv in [-1, 1].

    Args:
        model_fn: images (B, C, H, W) in [-1, 1] -> logits (B, classes); only called without
            gradients. An nn.Module runs in eval mode (restored after).
        x: clean images (B, C, H, W) in [-1, 1]. y: labels (B,) int64.
        eps: budget in [0, 1] image units.
        steps: iterations (>= 1). samples: random directions per step and image (>= 1).
        delta: finite-difference size, [-1, 1] units (0.02 = Uesato et al.'s 0.01 on [0, 1]).
        lr: Adam learning rate (or signed step), [-1, 1] units (0.02 = their 0.01).
        generator: torch.Generator for the directions (default: the global RNG).
        loss: "margin" or "ce". update: "adam" or "sign".
        max_batch: most images per model call (memory: the directions are evaluated in
            chunks of at most this many queries).
    Returns:
        Detached adversarial images, shape of x.

    Cost: steps * (2 * samples + 1) forward passes per image still correctly classified.

    Example:
        >>> x_adv = spsa(model, x, y, eps=0.1, steps=100, samples=128,
        ...              generator=torch.Generator().manual_seed(0))
    """
    x, y = check_batch(x, y)
    eps = check_eps(eps)
    steps = check_count(steps, "steps")
    samples = check_count(samples, "samples")
    delta = check_positive(delta, "delta")
    lr = check_positive(lr, "lr")
    max_batch = check_count(max_batch, "max_batch", minimum=2)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if update not in UPDATES:
        raise ValueError(f"update must be one of {', '.join(UPDATES)}, got {update!r}")
    if eps == 0:
        return project(x, x, eps)
    objective = _margin if loss == "margin" else _cross_entropy
    beta1, beta2 = ADAM_BETAS
    x_adv = x.clone()
    with eval_mode(model_fn), torch.no_grad():
        todo = (predict(model_fn, x, max_batch).argmax(1) == y).nonzero().flatten()
        m = torch.zeros_like(x) if update == "adam" else None
        v = torch.zeros_like(x) if update == "adam" else None
        for t in range(1, steps + 1):
            if len(todo) == 0:
                break
            xs, ys = x_adv[todo], y[todo]
            grad = _estimate_gradient(model_fn, xs, ys, objective, samples, delta, generator, max_batch)
            if update == "adam":
                m[todo] = beta1 * m[todo] + (1 - beta1) * grad
                v[todo] = beta2 * v[todo] + (1 - beta2) * grad.square()
                m_hat = m[todo] / (1 - beta1**t)
                v_hat = v[todo] / (1 - beta2**t)
                step = lr * m_hat / (v_hat.sqrt() + ADAM_EPS)
            else:
                step = lr * grad.sign()
            xs = project(xs + step, x[todo], eps)
            x_adv[todo] = xs
            fooled = predict(model_fn, xs, max_batch).argmax(1) != ys
            todo = todo[~fooled]
    return x_adv


def _estimate_gradient(model_fn, x, y, objective, samples, delta, generator, max_batch) -> Tensor:
    """SPSA estimate of grad_x objective, (n, C, H, W), from `samples` +-1 directions per image."""
    n = len(x)
    per_call = max(1, min(samples, max_batch // (2 * n)))
    grad = torch.zeros_like(x)
    for start in range(0, samples, per_call):
        k = min(per_call, samples - start)
        signs = torch.randint(0, 2, (n, k, *x.shape[1:]), generator=generator)  # on the CPU: the same on any device
        directions = signs.to(device=x.device, dtype=x.dtype) * 2 - 1
        centre = x.unsqueeze(1)
        queries = torch.cat([(centre + delta * directions), (centre - delta * directions)], dim=1).clamp(-1, 1)
        logits = predict(model_fn, queries.flatten(0, 1), max_batch)
        values = objective(logits, y.repeat_interleave(2 * k)).view(n, 2 * k)
        slopes = (values[:, :k] - values[:, k:]) / (2 * delta)
        grad += (slopes.view(n, k, *[1] * (x.dim() - 1)) * directions).sum(1)
    return grad / samples


def _margin(logits: Tensor, y: Tensor) -> Tensor:
    """max_{j != y} z_j - z_y per sample; positive iff misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return others - true


def _cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="none")


class SPSASpec(AttackSpec):
    """SPSA as a registry entry: the spec's steps and options, directions drawn from the run's
    generator; its step is the fixed learning rate `options["lr"]`. Each image stops once it is
    misclassified, whatever `early_stop` says (the attack only queries logits)."""

    step_rule: ClassVar[str] = "fixed"
    gradient_free: ClassVar[bool] = True

    def run(self, model_fn: ModelFn, x: Tensor, y: Tensor, eps: float,
            generator: torch.Generator | None = None, early_stop: bool = False) -> Tensor:
        return spsa(model_fn, x, y, eps, steps=self.steps, generator=generator, **self.options)

    def _step_size(self, eps: float) -> float:
        return self.options["lr"]
