"""What a CNN-F's prediction after t iterations is: the one place that defines it.

The paper scores the logits of the last step; the released code also averages the logits over
steps. Both read a trajectory of logits y_0 .. y_N (y_0: the plain feedforward pass):

    "last"     after t iterations: y_t
    "average"  after t iterations: (y_0 + ... + y_t) / (t + 1)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

OUTPUTS = ("last", "average")
"""The output modes a model can be scored by."""


def check_output(mode: str) -> str:
    """`mode` if it is an output mode, else a ValueError that lists them."""
    if mode not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {mode!r}")
    return mode


def scores_per_step(logits: Sequence[Tensor] | Tensor, mode: str) -> Tensor:
    """The scored logits after t = 0..N iterations, (N + 1, B, classes), from the logits of
    steps 0..N (a list of (B, classes) tensors or one (N + 1, B, classes) tensor)."""
    steps = torch.stack(list(logits)) if not isinstance(logits, Tensor) else logits
    if check_output(mode) == "last":
        return steps
    counts = torch.arange(1, len(steps) + 1, dtype=steps.dtype, device=steps.device)
    return steps.cumsum(0) / counts.view(-1, 1, 1)


def score(logits: Sequence[Tensor], mode: str) -> Tensor:
    """The scored logits after the last step, (B, classes): y_N, or the mean of y_0 .. y_N."""
    if check_output(mode) == "last":
        return logits[-1]
    return torch.stack(list(logits)).mean(0)
