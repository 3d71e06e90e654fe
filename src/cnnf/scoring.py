"""What a CNN-F's prediction after t iterations is: the one place that defines it.

The paper scores the logits of the last step; the released code also averages the logits over
steps. Both read a trajectory of logits y_0 .. y_N (y_0: the plain feedforward pass):

    "last"     after t iterations: y_t
    "average"  after t iterations: (y_0 + ... + y_t) / (t + 1)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from cnnf.inputs import check_count

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


@dataclass(frozen=True, order=True)
class Scoring:
    """One way to score a trajectory: the `output` mode after `iterations` iterations.
    Written "t/output" (e.g. "5/last") in results and sweep progress files."""

    iterations: int
    output: str

    def __post_init__(self):
        check_count(self.iterations, "iterations", minimum=0)
        check_output(self.output)

    def __str__(self) -> str:
        return f"{self.iterations}/{self.output}"

    @classmethod
    def parse(cls, text: str) -> Scoring:
        """The Scoring written as `text` ("t/output")."""
        iterations, _, output = text.partition("/")
        if not iterations.isdigit():
            raise ValueError(f"expected a scoring written iterations/output, e.g. '5/last', got {text!r}")
        return cls(int(iterations), output)
