"""Clean accuracy after every iteration count, for every output mode, in one inference, and the
trajectory's diagnostics (what the feedback does to the prediction and to the features)."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from cnnf import distributed
from cnnf.data import ImageSet
from cnnf.device import device_of
from cnnf.inputs import check_count
from cnnf.model import CNNF
from cnnf.precision import autocast, full
from cnnf.scoring import OUTPUTS, scores_per_step

DIAGNOSTICS = ("ce", "rec", "g_norm_ratio", "g_cosine")
"""Per-step means over images: cross entropy of y_t (t = 0..N); for the reconstructions g_t
(t = 0..N-1) against the clean features h_0 at layer k: mean squared error, ||g_t|| / ||h_0||
and the cosine of the angle between them."""


@torch.inference_mode()
def trajectory_statistics(model: CNNF, images: ImageSet, iterations: int, batch_size: int = 500,
                          precision: str = "fp32") -> dict[str, list[float]]:
    """Per step, means over `images`: the accuracy of every output mode (`OUTPUTS`, in [0, 1],
    scored as `cnnf.scoring` defines it) and the `DIAGNOSTICS`, with the model at `precision`.
    In a group of processes, each takes every world_size-th batch and the sums are gathered."""
    if len(images) == 0:
        raise ValueError("accuracy needs at least one image, got an empty image set (0 images)")
    check_count(iterations, "iterations", minimum=0)
    check_count(batch_size, "batch_size")
    sums: dict[str, torch.Tensor] = {}
    rank, processes = distributed.part()
    for x, y in itertools.islice(images.batches(batch_size), rank, None, processes):
        x, y = x.to(device_of(model)), y.to(device_of(model))
        with autocast(precision, x.device):
            run = model.infer(x, iterations=iterations)
        steps = [full(y_t) for y_t in run.logits]
        logits = torch.stack(steps)  # (N + 1, B, classes)
        per_image = {mode: (scores_per_step(logits, mode).argmax(-1) == y).double() for mode in OUTPUTS}
        per_image["ce"] = torch.stack([F.cross_entropy(y_t, y, reduction="none") for y_t in steps])
        per_image |= _reconstruction_statistics([full(g) for g in run.reconstructions], full(run.features[0]))
        for name, values in per_image.items():  # values: (steps, B)
            sums[name] = sums.get(name, 0) + values.double().sum(1)
    sums = _summed(distributed.all_gather({name: total.cpu() for name, total in sums.items()}))
    return {name: (total / len(images)).tolist() for name, total in sums.items()}


def _summed(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The sums of every process added up, name by name (a process without batches has none)."""
    names = dict.fromkeys(name for part in parts for name in part)
    return {name: sum(part[name] for part in parts if name in part) for name in names}


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
