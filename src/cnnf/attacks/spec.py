"""The contract of a registered attack: settings fixed by name, run on any batch.

Each attack module defines its AttackSpec subclass next to its function; the subclass says how
its attack runs with the fixed settings (`run`), the step size it takes at a budget, and what
it supports. Callers (the sweep, adversarial training) only ever call `spec.run(...)`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar

import torch
from torch import Tensor

from cnnf.attacks.threat import ModelFn, check_eps


@dataclass(frozen=True)
class AttackSpec(ABC):
    """An attack with fixed settings.

    name: registry name (e.g. "pgd40"). steps / restarts: per image (None where the attack has
    its own schedule, e.g. AutoAttack). options: further keyword arguments of the attack
    function. details: a one-line description.
    Class attributes: step_rule, how the step size follows eps ("fgsm": 2 * eps, "paper":
    `default_step_size`, "fixed", None: no single step size); gradient_free, True if the attack
    only queries logits; stops_early, True if it can keep each image's first misclassified
    iterate (see `run`).
    """

    name: str
    steps: int | None
    restarts: int | None
    options: Mapping[str, object] = field(default_factory=dict)
    details: str = ""

    step_rule: ClassVar[str | None] = None
    gradient_free: ClassVar[bool] = False
    stops_early: ClassVar[bool] = False

    def __post_init__(self):
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    @abstractmethod
    def run(
        self,
        model_fn: ModelFn,
        x: Tensor,
        y: Tensor,
        eps: float,
        generator: torch.Generator | None = None,
        early_stop: bool = False,
    ) -> Tensor:
        """x_adv for images x (B, C, H, W) in [-1, 1], labels y, budget eps in [0, 1] units.
        generator: the run's randomness. early_stop: keep each image's first misclassified
        iterate, only for a model_fn that is the scored model; attacks that cannot stop early
        (`stops_early` False) ignore it."""

    def step_size(self, eps: float) -> float | None:
        """Step size at budget eps ([0, 1] units), in [-1, 1] image units; None if not one."""
        return self._step_size(check_eps(eps))

    def _step_size(self, eps: float) -> float | None:
        """`step_size` at a checked budget; subclasses with a single step size override it."""
        return None

    def describe(self, eps: float | None = None) -> dict:
        """Settings for a results file: name, steps, restarts, step_size (in [-1, 1] units at
        budget eps; None without eps or without a single step size), step_rule, gradient_free,
        details."""
        return {
            "name": self.name,
            "steps": self.steps,
            "restarts": self.restarts,
            "step_size": None if eps is None else self.step_size(eps),
            "step_rule": self.step_rule,
            "step_units": "[-1, 1]",
            "gradient_free": self.gradient_free,
            "details": self.details,
        }
