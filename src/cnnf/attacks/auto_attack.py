"""AutoAttack (Croce & Hein, ICML 2020) through the PyPI package `pyautoattack` 0.2.0.

Install: pip install pyautoattack==0.2.0 (no dependencies besides torch and numpy).
AutoAttack works on [0, 1] images; this wrapper maps u in [0, 1] to the model's x = 2u - 1
and back, so eps (already in [0, 1] units) is passed through unchanged.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import torch
from torch import Tensor

from cnnf.attacks.spec import AttackSpec
from cnnf.attacks.threat import ModelFn, check_batch, check_eps, eval_mode, project
from cnnf.inputs import check_count

VERSIONS = ("standard", "plus", "rand", "custom")
ATTACK_NAMES = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
INSTALL = f"{sys.executable} -m pip install pyautoattack==0.2.0"


def autoattack(
    model_fn: ModelFn,
    x: Tensor,
    y: Tensor,
    eps: float,
    version: str = "standard",
    seed: int = 0,
    *,
    attacks: Sequence[str] | None = None,
    n_iter: int | None = None,
    n_queries: int | None = None,
    batch_size: int = 500,
    verbose: bool = False,
) -> Tensor:
    """Untargeted L-infinity AutoAttack on model_fn.

    Version "standard" = APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square (5000
    queries), each 100 iterations; a sample keeps the first attack that fools it. Square is
    gradient-free, so the ensemble also probes gradient masking.

    Threat model: ||x_adv - x||_inf <= 2 * eps in [-1, 1] units (eps in [0, 1] image units);
    x_adv in [-1, 1].

    Args:
        model_fn: images (B, C, H, W) in [-1, 1] -> logits (B, classes). An nn.Module runs in
            eval mode (restored after).
        x: clean images (B, C, H, W) in [-1, 1]. y: labels (B,) int64.
        eps: budget in [0, 1] image units (AutoAttack's own units).
        version: "standard", "plus", "rand" or "custom" (then `attacks` is required).
        seed: AutoAttack's seed; the global torch RNG state is restored afterwards.
        attacks: for version "custom", a subset of ATTACK_NAMES.
        n_iter: override the iterations of APGD and FAB (cheap runs, tests).
        n_queries: override Square's query budget.
        batch_size: images per AutoAttack batch. verbose: AutoAttack's progress log (DEBUG level);
            its sanity warnings (randomized or dynamic defense, Square beating the gradient
            attacks) are always logged.
    Returns:
        Detached adversarial images, shape of x (unchanged where no attack succeeded).

    Example:
        >>> x_adv = autoattack(gradient_source(model, "e2e"), x, y, eps=0.1)
    """
    x, y = check_batch(x, y)
    eps = check_eps(eps)
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {', '.join(VERSIONS)}, got {version!r}")
    if version == "custom":
        if not attacks:
            raise ValueError(f"version 'custom' needs attacks=[...] from {', '.join(ATTACK_NAMES)}")
        unknown = [a for a in attacks if a not in ATTACK_NAMES]
        if unknown:
            raise ValueError(f"unknown AutoAttack attack(s) {unknown}; choose from {', '.join(ATTACK_NAMES)}")
    elif attacks is not None:
        raise ValueError(f"attacks=... is only used with version='custom', got version {version!r}")
    if n_iter is not None:
        check_count(n_iter, "n_iter")
    if n_queries is not None:
        check_count(n_queries, "n_queries")
    check_count(batch_size, "batch_size")
    if eps == 0:
        return project(x, x, eps)
    AutoAttack = _import()

    def on_unit_interval(u: Tensor) -> Tensor:
        return model_fn((2 * u - 1).clamp(-1, 1))

    u = (x + 1) / 2
    logger = logging.getLogger("auto-attack")
    level = logger.level
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING)  # keep its sanity warnings
    try:
        with eval_mode(model_fn), torch.random.fork_rng(devices=[]):
            adversary = AutoAttack(
                on_unit_interval,
                norm="Linf",
                eps=eps,
                version=version,
                seed=seed,
                device=x.device,
                attacks=list(attacks) if version == "custom" else None,
            )
            adversary.verbose = verbose
            if n_iter is not None:
                for attack in (adversary.apgd, adversary.apgd_targeted):
                    _set_apgd_iterations(attack, n_iter)
                adversary.fab.n_iter = n_iter
            if n_queries is not None:
                adversary.square.n_queries = n_queries
            u_adv, _ = adversary.run_standard_evaluation(u, y, batch_size=batch_size)
    finally:
        logger.setLevel(level)
    # x + 2 (u_adv - u) returns untouched samples exactly (no round trip through u).
    return project(x + 2 * (u_adv.to(x) - u), x, eps)


class AutoAttackSpec(AttackSpec):
    """AutoAttack as a registry entry: the spec's options (e.g. version), AutoAttack's seed drawn
    from the run's generator (0 without one); its own schedule, no single step size."""

    def run(self, model_fn: ModelFn, x: Tensor, y: Tensor, eps: float,
            generator: torch.Generator | None = None, early_stop: bool = False) -> Tensor:
        seed = 0 if generator is None else int(torch.randint(0, 2**31 - 1, (), generator=generator))
        return autoattack(model_fn, x, y, eps, seed=seed, **self.options)


def _set_apgd_iterations(attack, n_iter: int) -> None:
    """Change an APGD attack's iterations and its step-size checkpoints (set from n_iter in its
    constructor: 22%, 6% and 3% of the iterations, Croce & Hein 2020 section 3.2)."""
    attack.n_iter = n_iter
    attack.n_iter_orig = n_iter
    attack.n_iter_2 = max(int(0.22 * n_iter), 1)
    attack.n_iter_min = max(int(0.06 * n_iter), 1)
    attack.size_decr = max(int(0.03 * n_iter), 1)


def _import():
    try:
        from pyautoattack import AutoAttack
    except ImportError as error:
        message = f"the autoattack attack needs the pyautoattack package; install it with: {INSTALL}"
        raise ImportError(message) from error
    return AutoAttack
