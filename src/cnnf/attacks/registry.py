"""Named attacks with fixed settings, for the command line and results files."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from torch import Tensor

from cnnf.attacks.auto_attack import autoattack
from cnnf.attacks.fast_gradient import fgsm
from cnnf.attacks.projected_gradient import default_step_size, pgd
from cnnf.attacks.simultaneous_perturbation import spsa
from cnnf.attacks.threat import ModelFn, check_eps, radius

STEP_RULES = ("fgsm", "paper", "fixed", None)


@dataclass(frozen=True)
class AttackSpec:
    """An attack with fixed settings.

    name: registry name (e.g. "pgd40"). fn: the attack function. steps / restarts: per image
    (None where the attack has its own schedule, e.g. AutoAttack). step_rule: how the step
    size follows eps: "fgsm" (2 * eps), "paper" (`default_step_size`), "fixed" (`fixed_step`),
    or None (no single step size). gradient_free: True if the attack only queries logits.
    options: further keyword arguments for fn. details: a one-line description.
    """

    name: str
    fn: Callable[..., Tensor]
    steps: int | None
    restarts: int | None
    step_rule: str | None
    gradient_free: bool
    options: Mapping[str, object] = field(default_factory=dict)
    fixed_step: float | None = None
    details: str = ""

    def __post_init__(self):
        if self.step_rule not in STEP_RULES:
            raise ValueError(f"step_rule must be one of {STEP_RULES}, got {self.step_rule!r}")
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    def step_size(self, eps: float) -> float | None:
        """Step size at budget eps ([0, 1] units), in [-1, 1] image units; None if not one."""
        eps = check_eps(eps)
        if self.step_rule == "fgsm":
            return radius(eps)
        if self.step_rule == "paper":
            return default_step_size(eps)
        if self.step_rule == "fixed":
            return self.fixed_step
        return None

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
        early_stop: PGD keeps each image's first misclassified iterate (see `pgd`); only for a
        model_fn that is the scored model. Single-step and own-schedule attacks ignore it."""
        if self.fn is fgsm:
            return fgsm(model_fn, x, y, eps)
        if self.fn is pgd:
            return pgd(model_fn, x, y, eps, self.steps, restarts=self.restarts, generator=generator,
                       early_stop=early_stop, **self.options)
        if self.fn is spsa:
            return spsa(model_fn, x, y, eps, steps=self.steps, generator=generator, **self.options)
        if self.fn is autoattack:
            seed = 0 if generator is None else int(torch.randint(0, 2**31 - 1, (), generator=generator))
            return autoattack(model_fn, x, y, eps, seed=seed, **self.options)
        return self.fn(model_fn, x, y, eps, generator=generator, **self.options)

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


def _pgd_spec(steps: int) -> AttackSpec:
    return AttackSpec(
        f"pgd{steps}", pgd, steps, 1, "paper", False,
        details=f"L-inf PGD, {steps} steps, CE loss, uniform random start, "
        "paper step size (0.02 if eps <= 0.3 else 0.03)",
    )


_SPSA_OPTIONS = {"samples": 128, "delta": 0.02, "lr": 0.02, "loss": "margin", "update": "adam"}

ATTACKS: Mapping[str, AttackSpec] = MappingProxyType(
    {
        "fgsm": AttackSpec("fgsm", fgsm, 1, 1, "fgsm", False, details="FGSM, one step of 2 * eps, CE loss"),
        "pgd7": _pgd_spec(7),
        "pgd20": _pgd_spec(20),
        "pgd40": _pgd_spec(40),
        "spsa": AttackSpec(
            "spsa", spsa, 100, 1, "fixed", True, _SPSA_OPTIONS, fixed_step=0.02,
            details="SPSA (Uesato et al. 2018), margin loss, 128 +-1 directions per step, delta 0.02, Adam lr 0.02",
        ),
        "autoattack": AttackSpec(
            "autoattack", autoattack, None, None, None, False, {"version": "standard"},
            details="AutoAttack standard (pyautoattack 0.2.0): APGD-CE, APGD-T, FAB-T, Square",
        ),
    }
)
"""Registry of named attacks; "pgd<N>" for any N >= 1 is also accepted by `parse_attacks`."""

_PGD_NAME = re.compile(r"pgd([1-9][0-9]*)")


def get_attack(name: str) -> AttackSpec:
    """The AttackSpec called `name` (a key of ATTACKS, or "pgd<N>")."""
    key = name.strip().lower()
    if key in ATTACKS:
        return ATTACKS[key]
    match = _PGD_NAME.fullmatch(key)
    if match:
        return _pgd_spec(int(match.group(1)))
    raise ValueError(f"unknown attack {name!r}; known attacks: {', '.join(ATTACKS)} (or pgd<N> for N steps)")


def parse_attacks(text: str) -> list[AttackSpec]:
    """Comma-separated attack names -> AttackSpecs, in order, duplicates dropped.

    Example: parse_attacks("fgsm,pgd40") -> [ATTACKS["fgsm"], ATTACKS["pgd40"]].
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a comma-separated string of attack names, got {type(text).__name__}")
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError(f"no attack named in {text!r}; known attacks: {', '.join(ATTACKS)} (or pgd<N> for N steps)")
    specs: list[AttackSpec] = []
    for name in names:
        spec = get_attack(name)
        if spec.name not in [s.name for s in specs]:
            specs.append(spec)
    return specs
