"""One optimisation step on a batch: the standard CNN-F objective (paper Table 1) or adversarial
training in either of the paper's two modes (section 4.1, appendix B.1).

Adversarial settings (the `adversarial` mapping of a training config):
    mode:   "conventional"  cross entropy on adversarial images only
            "augmentation"  cross entropy on clean and adversarial images (the paper's choice)
            In both, reconstructions aim at the *clean* image's features.
    attack: a registered attack name, e.g. "fgsm", "pgd7", "pgd40"
    eps:    L-inf budget in [0, 1] image units (the paper's figures 7 and 8 use 0.3)
    target: gradient source, "first" (the first feedforward pass, as the paper and its code do)
            or "e2e" (end to end through the iterations)

A step runs the model at the run's precision (`cnnf.precision`) and, in a group of processes
(`cnnf.distributed`), sums the gradients of all processes' images before the optimiser steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from cnnf import distributed
from cnnf.attacks import TARGETS, gradient_source, parse_attacks
from cnnf.config import ConfigError
from cnnf.losses import LossWeights, cnnf_loss
from cnnf.model import CNNF
from cnnf.precision import autocast

MODES = ("conventional", "augmentation")
ADVERSARIAL_KEYS = {"mode", "attack", "eps", "target"}


@dataclass(frozen=True)
class StepResult:
    """Loss terms (floats), correct scored predictions on clean images (None if not trained
    on them) and on adversarial images (None in standard training)."""

    terms: dict[str, float]
    correct: int | None
    correct_adv: int | None = None


Step = Callable[[Tensor, Tensor, float], StepResult]
"""(x, y, share) -> StepResult; share: the fraction of the global batch that x is (1 in one
process), by which the loss is scaled so that gradients summed over processes are the mean
over the global batch."""


@dataclass(frozen=True)
class Adversary:
    """Makes the adversarial images of a batch for training."""

    model: CNNF
    attack: object
    eps: float
    target: str
    precision: str = "fp32"

    @classmethod
    def from_config(cls, model: CNNF, settings: dict, precision: str = "fp32") -> Adversary:
        missing, unknown = ADVERSARIAL_KEYS - set(settings), set(settings) - ADVERSARIAL_KEYS
        if missing or unknown:
            raise ConfigError(f"adversarial needs exactly the keys {sorted(ADVERSARIAL_KEYS)}; "
                              f"missing {sorted(missing)}, unknown {sorted(unknown)}")
        if settings["mode"] not in MODES:
            raise ConfigError(f"adversarial.mode must be one of {MODES}, got {settings['mode']!r}")
        if settings["target"] not in ("first", "e2e"):
            raise ConfigError(f"adversarial.target must be 'first' or 'e2e' (of {TARGETS}), got {settings['target']!r}")
        if not isinstance(settings["eps"], (int, float)) or not 0 < settings["eps"] <= 1:
            raise ConfigError(f"adversarial.eps must be in (0, 1] ([0, 1] image units), got {settings['eps']!r}")
        (attack,) = parse_attacks(settings["attack"])
        return cls(model, attack, float(settings["eps"]), settings["target"], precision)

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        return self.attack.run(gradient_source(self.model, self.target, precision=self.precision), x, y, self.eps)


def make_step(model: CNNF, optimizer: torch.optim.Optimizer, weights: LossWeights, adversarial: dict | None,
              precision: str = "fp32") -> Step:
    """A function (x, y, share=1) -> StepResult that takes one optimiser step at `precision`."""
    if adversarial is None:
        return lambda x, y, share=1.0: _standard_step(model, optimizer, weights, precision, x, y, share)
    adversary = Adversary.from_config(model, adversarial, precision)
    mode = adversarial["mode"]
    return lambda x, y, share=1.0: _adversarial_step(model, optimizer, weights, adversary, mode, x, y, share)


def _standard_step(model, optimizer, weights: LossWeights, precision: str, x: Tensor, y: Tensor,
                   share: float) -> StepResult:
    with autocast(precision, x.device):
        run = model.infer(x, keep_activations=weights.norm > 0)
        loss, terms = cnnf_loss(model, run, y, weights=weights)
    _descend(model, optimizer, loss, share)
    return StepResult(_floats(terms), _correct(run.output(model.output), y))


def _adversarial_step(model, optimizer, weights: LossWeights, adversary: Adversary, mode: str,
                      x: Tensor, y: Tensor, share: float) -> StepResult:
    x_adv = adversary(x, y)
    with autocast(adversary.precision, x.device):
        clean_features = model.encode(x)
        if mode == "conventional":
            run = model.infer(x_adv, keep_activations=weights.norm > 0)
            loss, terms = cnnf_loss(model, run, y, target=clean_features, weights=weights)
        else:
            run = model.infer(torch.cat([x, x_adv]), keep_activations=weights.norm > 0)
            loss, terms = cnnf_loss(model, run, torch.cat([y, y]), target=torch.cat([clean_features] * 2),
                                    weights=weights)
    _descend(model, optimizer, loss, share)
    scores = run.output(model.output)
    if mode == "conventional":
        return StepResult(_floats(terms), None, _correct(scores, y))
    return StepResult(_floats(terms), _correct(scores[: len(y)], y), _correct(scores[len(y):], y))


def _descend(model, optimizer, loss: Tensor, share: float) -> None:
    """One optimiser step on `loss` scaled by `share`, with the gradients summed over processes."""
    optimizer.zero_grad(set_to_none=True)
    (loss if share == 1 else loss * share).backward()
    distributed.sum_gradients(model.parameters())
    optimizer.step()


def _floats(terms: dict[str, Tensor]) -> dict[str, float]:
    return {name: float(value) for name, value in terms.items()}


def _correct(scores: Tensor, y: Tensor) -> int:
    return int((scores.argmax(1) == y).sum())
