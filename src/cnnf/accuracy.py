"""Clean accuracy after every iteration count, for every output mode, in one inference."""

from __future__ import annotations

import torch

from cnnf.data import ImageSet
from cnnf.inputs import check_count
from cnnf.model import CNNF
from cnnf.scoring import OUTPUTS, scores_per_step


@torch.inference_mode()
def accuracy_per_iteration(model: CNNF, images: ImageSet, iterations: int, batch_size: int = 500) -> dict[str, list[float]]:
    """{"last": [acc after t = 0..N iterations], "average": [...]}, accuracies in [0, 1],
    each output mode scored as `cnnf.scoring` defines it."""
    if len(images) == 0:
        raise ValueError("accuracy needs at least one image, got an empty image set (0 images)")
    check_count(iterations, "iterations", minimum=0)
    check_count(batch_size, "batch_size")
    correct = {mode: torch.zeros(iterations + 1, dtype=torch.float64) for mode in OUTPUTS}
    for x, y in images.batches(batch_size):
        logits = torch.stack(model.infer(x, iterations=iterations).logits)  # (N + 1, B, classes)
        for mode in OUTPUTS:
            correct[mode] += (scores_per_step(logits, mode).argmax(-1) == y).sum(1)
    return {mode: (c / len(images)).tolist() for mode, c in correct.items()}

