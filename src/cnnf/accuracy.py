"""Clean accuracy after every iteration count, for both output modes, in one inference."""

from __future__ import annotations

import torch

from cnnf.data import ImageSet
from cnnf.model import CNNF


@torch.inference_mode()
def accuracy_per_iteration(model: CNNF, images: ImageSet, iterations: int, batch_size: int = 500) -> dict:
    """{"last": [acc after t = 0..N iterations], "average": [...]}, accuracies in [0, 1].

    "last" after t iterations scores logits y_t; "average" scores the mean of y_0..y_t.
    """
    correct = {mode: torch.zeros(iterations + 1, dtype=torch.float64) for mode in ("last", "average")}
    steps = torch.arange(1, iterations + 2).view(-1, 1, 1)
    for x, y in images.batches(batch_size):
        logits = torch.stack(model.infer(x, iterations=iterations).logits)  # (N + 1, B, classes)
        outputs = {"last": logits, "average": logits.cumsum(0) / steps}
        for mode, scores in outputs.items():
            correct[mode] += (scores.argmax(-1) == y).sum(1)
    return {mode: (c / len(images)).tolist() for mode, c in correct.items()}
