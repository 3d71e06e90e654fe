"""Named attacks with fixed settings, for the command line and results files."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from cnnf.attacks.auto_attack import AutoAttackSpec
from cnnf.attacks.fast_gradient import FGSMSpec
from cnnf.attacks.projected_gradient import PGDSpec
from cnnf.attacks.simultaneous_perturbation import SPSASpec
from cnnf.attacks.spec import AttackSpec


def _pgd_spec(steps: int) -> PGDSpec:
    return PGDSpec(
        f"pgd{steps}", steps, 1,
        details=f"L-inf PGD, {steps} steps, CE loss, uniform random start, "
        "paper step size (0.02 if eps <= 0.3 else 0.03)",
    )


_SPSA_OPTIONS = {"samples": 128, "delta": 0.02, "lr": 0.02, "loss": "margin", "update": "adam"}

ATTACKS: Mapping[str, AttackSpec] = MappingProxyType(
    {
        "fgsm": FGSMSpec("fgsm", 1, 1, details="FGSM, one step of 2 * eps, CE loss"),
        "pgd7": _pgd_spec(7),
        "pgd20": _pgd_spec(20),
        "pgd40": _pgd_spec(40),
        "spsa": SPSASpec(
            "spsa", 100, 1, _SPSA_OPTIONS,
            details="SPSA (Uesato et al. 2018), margin loss, 128 +-1 directions per step, delta 0.02, Adam lr 0.02",
        ),
        "autoattack": AutoAttackSpec(
            "autoattack", None, None, {"version": "standard"},
            details="AutoAttack standard (pyautoattack 0.2.0): APGD-CE, APGD-T, FAB-T, Square",
        ),
    }
)
"""Registry of named attacks; "pgd<N>" for any N >= 1 is also accepted by `parse_attacks`.
Each entry is an AttackSpec subclass that runs its own attack: `ATTACKS[name].run(model_fn, x, y, eps)`."""

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
