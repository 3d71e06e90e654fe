"""One optimisation step on a batch: the standard CNN-F objective (paper Table 1)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from cnnf.losses import LossWeights, cnnf_loss
from cnnf.model import CNNF

Step = Callable[[Tensor, Tensor], tuple[dict[str, float], int]]


def make_step(model: CNNF, optimizer: torch.optim.Optimizer, weights: LossWeights, adversarial: dict | None) -> Step:
    """A function (x, y) -> (loss terms as floats, number of correct scored predictions)."""
    if adversarial is not None:
        raise NotImplementedError("adversarial training is not available yet")

    def step(x: Tensor, y: Tensor) -> tuple[dict[str, float], int]:
        run = model.infer(x, keep_activations=weights.norm > 0)
        loss, terms = cnnf_loss(model, run, y, weights=weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        correct = int((run.output(model.output).argmax(1) == y).sum())
        return {name: float(value) for name, value in terms.items()}, correct

    return step
