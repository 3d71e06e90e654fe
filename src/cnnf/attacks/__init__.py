"""Adversarial attacks on CNN-F (docs/DESIGN.md section 6), one attack per module, one contract:

    x_adv = attack(model_fn, x, y, eps, ...)

model_fn: images (B, C, H, W) in [-1, 1] -> logits (B, classes); usually a
`gradient_source(model, target)`. x: clean images in [-1, 1]; y: labels (B,) int64.
eps: always in [0, 1] image units (the paper's convention); the L-infinity radius in the
model's [-1, 1] units is 2 * eps. All attacks are untargeted, return detached x_adv with
||x_adv - x||_inf <= 2 * eps and values in [-1, 1] (through `project`, the one place that
enforces the threat model), and leave parameter gradients and train/eval modes unchanged.

Attacks: fgsm, pgd (random start, restarts), spsa (gradient-free), autoattack (wraps the
PyPI package pyautoattack). `ATTACKS` / `parse_attacks` give named fixed settings: each is an
`AttackSpec` subclass defined beside its attack (FGSMSpec, PGDSpec, SPSASpec, AutoAttackSpec)
whose `run` calls that attack, so callers never ask which attack they hold.

Example:
    >>> import cnnf
    >>> from cnnf.attacks import gradient_source, parse_attacks
    >>> model = cnnf.create_model("paper_mnist", iterations=5)
    >>> for spec in parse_attacks("fgsm,pgd40"):
    ...     x_adv = spec.run(gradient_source(model, "first"), x, y, eps=0.1)
    ...     print(spec.name, (model(x_adv).argmax(1) == y).float().mean())
"""

from cnnf.attacks.auto_attack import AutoAttackSpec, autoattack
from cnnf.attacks.fast_gradient import FGSMSpec, fgsm
from cnnf.attacks.projected_gradient import PGDSpec, default_step_size, pgd
from cnnf.attacks.registry import ATTACKS, get_attack, parse_attacks
from cnnf.attacks.simultaneous_perturbation import SPSASpec, spsa
from cnnf.attacks.spec import AttackSpec
from cnnf.attacks.targets import TARGETS, GradientSource, gradient_source
from cnnf.attacks.threat import project

__all__ = [
    "ATTACKS",
    "AttackSpec",
    "AutoAttackSpec",
    "FGSMSpec",
    "GradientSource",
    "PGDSpec",
    "SPSASpec",
    "TARGETS",
    "autoattack",
    "default_step_size",
    "fgsm",
    "get_attack",
    "gradient_source",
    "parse_attacks",
    "pgd",
    "project",
    "spsa",
]
