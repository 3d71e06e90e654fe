"""PGD: projected gradient descent in L-infinity (Madry et al., 2018), as in the CNN-F paper."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from cnnf.attacks.spec import AttackSpec
from cnnf.attacks.threat import (
    ModelFn,
    check_batch,
    check_eps,
    check_positive,
    eval_mode,
    input_gradient,
    predict,
    project,
    radius,
)
from cnnf.inputs import check_count


def default_step_size(eps: float) -> float:
    """The paper's PGD step size (appendix B.1), in [-1, 1] image units.

    The paper works on [-1, 1] images and sets the step to 0.02 for an actual radius <= 0.6
    and 0.03 above; in the [0, 1] units of `eps` that is 0.02 for eps <= 0.3, 0.03 above.
    (0.02 in [-1, 1] units is 0.01 in [0, 1] units.)
    """
    return 0.02 if check_eps(eps) <= 0.3 else 0.03


def pgd(
    model_fn: ModelFn,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int,
    step_size: float | None = None,
    restarts: int = 1,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    early_stop: bool = False,
) -> Tensor:
    """Untargeted L-infinity PGD on the cross-entropy loss, with random start and restarts.

    Each restart: x_0 = x + U(-2 eps, 2 eps) (if random_start), projected; then `steps` times
    x_{t+1} = project(x_t + step_size * sign(grad_x CE(model_fn(x_t), y))). The last iterate
    is the restart's result. Per sample, the first restart whose result is misclassified is
    kept (later restarts only attack the samples not yet fooled), else the last restart's.

    Threat model: ||x_adv - x||_inf <= 2 * eps in [-1, 1] units (eps in [0, 1] image units,
    the paper's convention); x_adv in [-1, 1].

    Args:
        model_fn: images (B, C, H, W) in [-1, 1] -> logits (B, classes). An nn.Module runs in
            eval mode (restored after); see `gradient_source` for CNN-F.
        x: clean images (B, C, H, W) in [-1, 1].
        y: labels (B,) int64.
        eps: budget in [0, 1] image units.
        steps: gradient steps per restart (>= 1), e.g. 7, 20 or 40 (PGD-7 / PGD-40).
        step_size: in [-1, 1] image units; default `default_step_size(eps)` (paper: 0.02 for
            eps <= 0.3, else 0.03). Note steps * step_size bounds the distance travelled.
        restarts: number of random restarts (>= 1); > 1 needs random_start.
        random_start: start from a uniform point in the ball (Madry et al.) or from x.
        generator: torch.Generator for the random starts (default: the global RNG).
        early_stop: keep each sample's first misclassified iterate and stop attacking it.
            Only valid when model_fn is the model being scored (target "e2e"): then robust
            accuracy is never higher than without it (the trajectories agree until the stop),
            and fooled samples cost no further steps.
    Returns:
        Detached adversarial images, shape of x.

    Example:
        >>> gen = torch.Generator().manual_seed(0)
        >>> x_adv = pgd(gradient_source(model, "e2e"), x, y, eps=0.1, steps=40, generator=gen)
        >>> robust_accuracy = (model(x_adv).argmax(1) == y).float().mean()
    """
    x, y = check_batch(x, y)
    eps = check_eps(eps)
    steps = check_count(steps, "steps")
    restarts = check_count(restarts, "restarts")
    step_size = default_step_size(eps) if step_size is None else check_positive(step_size, "step_size")
    if restarts > 1 and not random_start:
        raise ValueError("restarts > 1 needs random_start=True (restarts from x itself are all identical)")
    if eps == 0:
        return project(x, x, eps)
    result = x.clone()
    todo = torch.arange(len(x), device=x.device)
    with eval_mode(model_fn):
        for restart in range(restarts):
            xs, ys = x[todo], y[todo]
            x_adv = _pgd_run(model_fn, xs, ys, eps, steps, step_size, random_start, generator, early_stop)
            result[todo] = x_adv
            if restart == restarts - 1:
                break
            fooled = predict(model_fn, x_adv).argmax(1) != ys
            todo = todo[~fooled]
            if len(todo) == 0:
                break
    return result


def _pgd_run(model_fn, x, y, eps, steps, step_size, random_start, generator, early_stop) -> Tensor:
    """One PGD restart from a random (or the clean) point; returns the last iterate (or, with
    early_stop, the first misclassified one)."""
    x_adv = x.clone()  # updated in place, sample by sample
    if random_start:
        r = radius(eps)
        start = torch.empty(x.shape, dtype=x.dtype).uniform_(-r, r, generator=generator)  # on the CPU: the same
        x_adv = project(x + start.to(x.device), x, eps)                                   # starts on any device
    active = torch.arange(len(x), device=x.device)
    for _ in range(steps):
        grad, logits = input_gradient(model_fn, x_adv[active], y[active])
        if early_stop:
            correct = logits.argmax(1) == y[active]
            active, grad = active[correct], grad[correct]
            if len(active) == 0:
                break
        x_adv[active] = project(x_adv[active] + step_size * grad.sign(), x[active], eps)
    return x_adv


class PGDSpec(AttackSpec):
    """PGD as a registry entry: the spec's steps and restarts at the paper's step size, random
    starts from the run's generator; the one registered attack that can stop early."""

    step_rule: ClassVar[str] = "paper"
    stops_early: ClassVar[bool] = True

    def run(self, model_fn: ModelFn, x: Tensor, y: Tensor, eps: float,
            generator: torch.Generator | None = None, early_stop: bool = False) -> Tensor:
        return pgd(model_fn, x, y, eps, self.steps, restarts=self.restarts, generator=generator,
                   early_stop=early_stop, **self.options)

    def _step_size(self, eps: float) -> float:
        return default_step_size(eps)
