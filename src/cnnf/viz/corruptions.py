"""The corruptions of figure 9 (b-d): Gaussian blur, additive Gaussian noise, and a PGD
adversarial perturbation, on images in [-1, 1] (the model's range); "clean" leaves them as
they are. Noise and eps are given in [0, 1] image units, as everywhere in cnnf."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cnnf.attacks import gradient_source, pgd
from cnnf.attacks.threat import PIXEL_MAX, PIXEL_MIN, check_eps, check_positive
from cnnf.corruptions import gaussian_blur
from cnnf.inputs import check_count
from cnnf.model import CNNF

KINDS = ("clean", "blur", "noise", "pgd")
"""The inputs each figure shows: the clean image and its three corruptions."""


@dataclass(frozen=True)
class Corruptions:
    """Settings of the three corruptions.

    blur_sigma: standard deviation of the Gaussian blur kernel, in pixels (> 0).
    noise_std:  standard deviation of the additive Gaussian noise, [0, 1] image units (> 0).
    eps:        PGD budget (L-infinity), [0, 1] image units, the paper's convention.
    pgd_steps:  PGD steps at the paper's step size (40: PGD-40, as in figure 9b).
    target:     what PGD differentiates: "first" (the first feedforward pass, the paper's
                transfer attack) or "e2e" (through the feedback iterations).
    seed:       seeds the noise and PGD's random start.
    """

    blur_sigma: float = 1.0
    noise_std: float = 0.2
    eps: float = 0.1
    pgd_steps: int = 40
    target: str = "first"
    seed: int = 0

    def __post_init__(self):
        check_positive(self.blur_sigma, "blur_sigma")
        check_positive(self.noise_std, "noise_std")
        check_eps(self.eps)
        check_count(self.pgd_steps, "pgd_steps")
        if self.target not in ("first", "e2e"):
            raise ValueError(f"PGD target must be 'first' or 'e2e', got {self.target!r}")

    def generator(self) -> torch.Generator:
        """A CPU generator seeded with `seed`: pass one to every batch of a pass over a data set."""
        return torch.Generator().manual_seed(self.seed)

    def apply(self, kind: str, model: CNNF, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Images x (B, C, H, W) in [-1, 1], labels y (B,) -> the `kind` corruption of x, in [-1, 1].
        The noise and PGD's random start are drawn from `generator` (default: a new `self.generator()`)."""
        if kind == "clean":
            return x
        if kind == "blur":
            return gaussian_blur(x, self.blur_sigma)
        generator = self.generator() if generator is None else generator
        if kind == "noise":
            noise = torch.randn(x.shape, generator=generator).to(x.device)
            return (x + 2 * self.noise_std * noise).clamp(PIXEL_MIN, PIXEL_MAX)
        if kind == "pgd":
            return pgd(gradient_source(model, self.target), x, y, self.eps, self.pgd_steps, generator=generator)
        raise ValueError(f"unknown corruption {kind!r}; choose from {', '.join(KINDS)}")

    def describe(self, kind: str) -> str:
        """A short label, e.g. "PGD-40, eps 0.1 (first pass)"."""
        return {"clean": "clean",
                "blur": f"Gaussian blur, sigma {self.blur_sigma:g} px",
                "noise": f"Gaussian noise, std {self.noise_std:g}",
                "pgd": f"PGD-{self.pgd_steps}, eps {self.eps:g} ({self.target})"}[kind]
