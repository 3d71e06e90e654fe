"""Common corruptions at 5 severities, generated on the fly from a test set (beyond the paper).

The definitions follow Hendrycks & Dietterich (ICLR 2019, "Benchmarking neural network
robustness to common corruptions and perturbations") in their CIFAR-10-C form, the one made
for the smallest images (32 x 32), applied to 28 x 28 grayscale images. Each works on pixel
values u in [0, 1] (u = (x + 1) / 2 for the model's x in [-1, 1]), clips to [0, 1] and maps
back, so corrupted images stay in [-1, 1]. Parameters per severity 1..5 (`SEVERITIES`):

| name | what | severity 1, 2, 3, 4, 5 |
|---|---|---|
| gaussian_noise | u + N(0, c^2) per pixel | c = 0.04, 0.06, 0.08, 0.09, 0.10 |
| shot_noise | Poisson(u c) / c per pixel | c = 500, 250, 100, 75, 50 |
| impulse_noise | a fraction c of pixels set to 0 or 1 (half each) | c = 0.01, 0.02, 0.03, 0.05, 0.07 |
| gaussian_blur | Gaussian filter, std c pixels, edge pixels repeated | c = 0.4, 0.6, 0.7, 0.8, 1.0 |
| contrast | (u - mean(u)) c + mean(u), the mean per image | c = 0.75, 0.5, 0.4, 0.3, 0.15 |
| brightness | u + c (for grayscale, HSV's value channel is u) | c = 0.05, 0.1, 0.15, 0.2, 0.3 |
| pixelate | area-downsample to round(28 c) pixels, nearest-upsample back | c = 0.85, 0.7, 0.55, 0.4, 0.3 |

Pixelate is the one adaptation of a parameter: CIFAR-10-C's c = 0.95, 0.9, 0.85, 0.75, 0.65
resample 28 x 28 images to 27, 25, 24, 21 and 18 pixels, whose blocks do not divide 28, and
severity 3 then distorts less than severity 2 (mean |change| on Fashion-MNIST test images:
0.123, 0.129, 0.121, 0.123, 0.144); the sizes 24, 20, 15, 11 and 8 grow monotonically.

Randomness comes only from a torch.Generator seeded with `seed`: the same call gives the same
images. `corrupt_set` also rounds to bytes, as the published corruption data sets are stored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
import torch.nn.functional as F

from cnnf.data import ImageSet, to_model_range

SEVERITIES: Mapping[str, tuple[float, ...]] = MappingProxyType({
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "pixelate": (0.85, 0.7, 0.55, 0.4, 0.3),
})
"""The parameter c of each corruption at severities 1..5 (module docstring)."""

CORRUPTIONS = tuple(SEVERITIES)


def corrupt(x: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Images x (B, C, H, W) in [-1, 1] with corruption `name` at `severity` (1..5), in [-1, 1]."""
    c = SEVERITIES[check_corruption(name)][check_severity(severity) - 1]
    generator = torch.Generator().manual_seed(seed)
    u = (x.detach().float().cpu() + 1) / 2
    return (_FUNCTIONS[name](u, c, generator).clamp(0, 1) * 2 - 1).to(x.device)


def corrupt_set(images: ImageSet, name: str, severity: int, seed: int = 0) -> ImageSet:
    """`images` corrupted as `corrupt` does, rounded back to bytes."""
    x = corrupt(to_model_range(images.images), name, severity, seed)
    pixels = ((x + 1) / 2 * 255).round().to(torch.uint8)
    return ImageSet(pixels, images.labels, images.num_classes)


def check_corruption(name: str) -> str:
    """`name` if it is a known corruption, else a ValueError listing them."""
    if name not in SEVERITIES:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    return name


def check_severity(severity: int) -> int:
    """`severity` if it is an integer 1..5, else a ValueError."""
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer 1..5 (0 is the clean image: do not corrupt it), got {severity!r}")
    return severity


def _gaussian_noise(u: torch.Tensor, c: float, generator: torch.Generator) -> torch.Tensor:
    return u + c * torch.randn(u.shape, generator=generator)


def _shot_noise(u: torch.Tensor, c: float, generator: torch.Generator) -> torch.Tensor:
    return torch.poisson(u * c, generator=generator) / c


def _impulse_noise(u: torch.Tensor, c: float, generator: torch.Generator) -> torch.Tensor:
    hit = torch.rand(u.shape, generator=generator) < c
    salt = torch.rand(u.shape, generator=generator) < 0.5
    return torch.where(hit, salt.to(u.dtype), u)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur each channel of x (B, C, H, W) with a normalised Gaussian kernel of std `sigma`
    pixels, radius ceil(4 sigma), repeating the edge pixels. It commutes with x -> a x + b, so
    it blurs images in [0, 1] and in [-1, 1] alike."""
    radius = math.ceil(4 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-offsets.square() / (2 * sigma * sigma))
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def _gaussian_blur(u: torch.Tensor, c: float, generator: torch.Generator) -> torch.Tensor:
    return gaussian_blur(u, c)


def _contrast(u: torch.Tensor, c: float, generator: torch.Generator) -> torch.Tensor:
    mean = u.mean(dim=(1, 2, 3), keepdim=True)
    return (u - mean) * c + mean


def _brightness(u: torch.Tensor, c: float, generator: torch.Generator) -> torch.Tensor:
    return u + c


def _pixelate(u: torch.Tensor, c: float, generator: torch.Generator) -> torch.Tensor:
    size = (round(u.shape[2] * c), round(u.shape[3] * c))
    return F.interpolate(F.interpolate(u, size=size, mode="area"), size=u.shape[2:], mode="nearest")


_FUNCTIONS: dict[str, Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "gaussian_blur": _gaussian_blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "pixelate": _pixelate,
}
