"""Budgets of `cnnf reproduce`: `quick` (minutes, for the tests), `cpu` (a few hours per
figure on 2 cores) and `paper` (the paper's budgets, for a GPU or a cluster).

A profile changes only budgets, never what a figure compares: epochs and training images per
model kind, training seeds, test images, attack seeds, the eps grid and, in `quick` only,
fewer PGD steps. None means "the base config's value" (or the full test set).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

STANDARD, ADVERSARIAL = "standard", "adversarial"
PAPER_EPS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)


@dataclass(frozen=True)
class Profile:
    """The budget of every figure under one name (module docstring)."""

    name: str
    summary: str
    training_seeds: int                      # seeds 0..n-1 of every model
    epochs: Mapping[str, int | None]         # per model kind (STANDARD, ADVERSARIAL)
    train_subset: Mapping[str, int | None]   # training images per model kind
    val_size: int | None                     # validation images carved from the training set
    finetune_adversarial: bool               # adversarial models start from the standard model of the same seed
    test_subset: int | None                  # the first n test images
    attack_seeds: int                        # random starts per attack with randomness (not FGSM)
    eps: tuple[float, ...]                   # the eps grid of the figures ([0, 1] units)
    eps_wide: tuple[float, ...]              # a wider grid, for "adversaries of different strength"
    strongest_subset: int | None             # test images of the strongest evaluation
    autoattack: bool                         # AutoAttack in the strongest evaluation
    corruption_subset: int | None            # test images of the corruption table
    attack_substitutes: Mapping[str, str] = field(default_factory=dict)  # e.g. pgd40 -> pgd3 (quick only)

    def attack(self, name: str) -> str:
        """The attack this profile runs where a figure names `name`."""
        return self.attack_substitutes.get(name, name)

    def config_overrides(self, kind: str) -> dict:
        """Config values of a model of `kind` that this profile sets (none: the base config)."""
        values = {"epochs": self.epochs[kind], "train_subset": self.train_subset[kind], "val_size": self.val_size}
        return {key: value for key, value in values.items() if value is not None}

    def title(self, text: str) -> str:
        """A panel title naming the attacks this profile runs, e.g. "PGD-3 (for PGD-40)"."""
        for name, substitute in self.attack_substitutes.items():
            text = text.replace(display_name(name), f"{display_name(substitute)} (for {display_name(name)})")
        return text

    def notes(self) -> list[str]:
        """How this profile departs from the paper's budgets, one sentence each."""
        notes = [self.summary]
        notes += [f"{name} is run as {substitute} (fewer steps)" for name, substitute in self.attack_substitutes.items()]
        if not self.autoattack:
            notes.append("the strongest evaluation leaves out AutoAttack")
        return notes


def display_name(attack: str) -> str:
    """An attack as the paper writes it: "pgd40" -> "PGD-40", "fgsm" -> "FGSM"."""
    return f"PGD-{attack[3:]}" if attack.startswith("pgd") else attack.upper()


def _kinds(standard: int | None, adversarial: int | None) -> Mapping[str, int | None]:
    return MappingProxyType({STANDARD: standard, ADVERSARIAL: adversarial})


PROFILES: Mapping[str, Profile] = MappingProxyType({
    "quick": Profile(
        name="quick",
        summary="quick: a pipeline check of minutes, not a result: 1 step of 128 training images "
                "(64 for adversarial fine-tunes), 2 seeds, 32 test images, PGD with 3 steps",
        training_seeds=2, epochs=_kinds(1, 1), train_subset=_kinds(128, 64), val_size=50,
        finetune_adversarial=True, test_subset=32, attack_seeds=1, eps=(0.0, 0.1, 0.2), eps_wide=(0.0, 0.1, 0.2, 0.4),
        strongest_subset=16, autoattack=False, corruption_subset=32,
        attack_substitutes=MappingProxyType({"pgd40": "pgd3"}),
    ),
    "cpu": Profile(
        name="cpu",
        summary="cpu: 3 epochs on 20,000 training images (standard), adversarial models are 2-epoch "
                "fine-tunes on 10,000 images of the standard model of the same seed; 3 seeds; "
                "the first 1000 test images; 5 values of eps",
        training_seeds=3, epochs=_kinds(3, 2), train_subset=_kinds(20000, 10000), val_size=1000,
        finetune_adversarial=True, test_subset=1000, attack_seeds=1, eps=(0.0, 0.05, 0.1, 0.2, 0.3),
        eps_wide=(0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5), strongest_subset=100, autoattack=True, corruption_subset=2000,
    ),
    "paper": Profile(
        name="paper",
        summary="paper: the paper's budgets (30 standard and 90 adversarial epochs from scratch, "
                "5 seeds, the full test set), with the recipe's cosine learning-rate decay",
        training_seeds=5, epochs=_kinds(30, 90), train_subset=_kinds(None, None), val_size=None,
        finetune_adversarial=False, test_subset=None, attack_seeds=1, eps=PAPER_EPS,
        eps_wide=PAPER_EPS + (0.35, 0.4, 0.45, 0.5), strongest_subset=1000, autoattack=True, corruption_subset=None,
    ),
})


def get_profile(name: str) -> Profile:
    """The profile called `name`, or a ValueError listing them."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose from {', '.join(PROFILES)}")
    return PROFILES[name]
