"""Clean accuracy after every iteration count, for every output mode, in one inference, and the
trajectory's diagnostics (what the feedback does to the prediction and to the features)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cnnf.data import ImageSet
from cnnf.device import device_of
from cnnf.inputs import check_count
from cnnf.model import CNNF
from cnnf.scoring import OUTPUTS, scores_per_step

DIAGNOSTICS = ("ce", "rec", "g_norm_ratio", "g_cosine")
"""Per-step means over images: cross entropy of y_t (t = 0..N); for the reconstructions g_t
(t = 0..N-1) against the clean features h_0 at layer k: mean squared error, ||g_t|| / ||h_0||
and the cosine of the angle between them."""


@torch.inference_mode()
def trajectory_statistics(model: CNNF, images: ImageSet, iterations: int,
                          batch_size: int = 500) -> dict[str, list[float]]:
    """Per step, means over `images`: the accuracy of every output mode (`OUTPUTS`, in [0, 1],
    scored as `cnnf.scoring` defines it) and the `DIAGNOSTICS`."""
    if len(images) == 0:
        raise ValueError("accuracy needs at least one image, got an empty image set (0 images)")
    check_count(iterations, "iterations", minimum=0)
    check_count(batch_size, "batch_size")
    sums: dict[str, torch.Tensor] = {}
    for x, y in images.batches(batch_size):
        x, y = x.to(device_of(model)), y.to(device_of(model))
        run = model.infer(x, iterations=iterations)
        logits = torch.stack(run.logits)  # (N + 1, B, classes)
        per_image = {mode: (scores_per_step(logits, mode).argmax(-1) == y).double() for mode in OUTPUTS}
        per_image["ce"] = torch.stack([F.cross_entropy(y_t, y, reduction="none") for y_t in run.logits])
        per_image |= _reconstruction_statistics(run.reconstructions, run.features[0])
        for name, values in per_image.items():  # values: (steps, B)
            sums[name] = sums.get(name, 0) + values.double().sum(1)
    return {name: (total / len(images)).cpu().tolist() for name, total in sums.items()}


def accuracy_per_iteration(model: CNNF, images: ImageSet, iterations: int, batch_size: int = 500) -> dict[str, list[float]]:
    """{"last": [acc after t = 0..N iterations], "average": [...]}, accuracies in [0, 1]."""
    statistics = trajectory_statistics(model, images, iterations, batch_size)
    return {mode: statistics[mode] for mode in OUTPUTS}


def _reconstruction_statistics(reconstructions: list[torch.Tensor], clean: torch.Tensor) -> dict[str, torch.Tensor]:
    """(N, B) per image: squared error, norm ratio and cosine of each g_t against h_0."""
    if not reconstructions:
        return {}
    g = torch.stack(reconstructions).flatten(2)  # (N, B, D)
    h = clean.flatten(1).expand_as(g)
    return {"rec": (g - h).square().mean(-1), "g_norm_ratio": g.norm(dim=-1) / h.norm(dim=-1).clamp_min(1e-12),
            "g_cosine": F.cosine_similarity(g, h, dim=-1)}
