"""The results of a robustness sweep as typed records, and the JSON files they are saved in.

A results file holds `SweepResult.to_plain()`:
    {"meta": {...}, "clean": {"t/output": accuracy}, "rows": [Row, ...], "sanity": [Check, ...]}
with every record written as a JSON object of its fields (`dataclasses.asdict`). Plots and
tables read results files back with `read_results`, never from a live model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from cnnf.records import from_plain, read_json


@dataclass(frozen=True, kw_only=True)
class Row:
    """Accuracy of one attack run (mean and std over seeds) scored at one (iterations, output).

    eps is in [0, 1] image units; step_size in [-1, 1] units. "e2e" runs differentiate the
    model at its own N and output mode; a row scored at another iteration count or mode from
    the same images has attacked_output False (a transfer). "worst-case" rows (target "all")
    count an image as robust only if it survives every attack and target; they have no
    steps, restarts, step_size, early_stop, attacked_output or seconds (None).
    """

    attack: str
    target: str
    eps: float
    steps: int | None
    restarts: int | None
    step_size: float | None
    early_stop: bool | None = None
    iterations: int
    output: str
    images: int
    attacked_output: bool | None
    accuracy_mean: float
    accuracy_std: float
    accuracies: list[float]
    seconds: float | None


    @property
    def curve(self) -> Curve:
        """The accuracy-vs-eps curve the row is a point of."""
        return Curve(self.attack, self.target, self.iterations, self.output)


@dataclass(frozen=True)
class Curve:
    """Accuracy against eps of one attack from one target, scored at (iterations, output)."""

    attack: str
    target: str
    iterations: int
    output: str

    def __str__(self) -> str:
        return f"{self.attack}/{self.target}/{self.iterations}/{self.output}"


@dataclass(frozen=True, kw_only=True)
class Check:
    """A sanity check of a sweep; a failed `warning` is reported but is no error."""

    check: str
    passed: bool
    warning: bool = False
    detail: str


@dataclass
class SweepResult:
    """What a sweep measured: `meta` (settings, model, code revision), clean accuracy per
    scoring ("t/output"), the rows, and the sanity checks."""

    meta: dict
    clean: dict[str, float]
    rows: list[Row]
    sanity: list[Check]

    def to_plain(self) -> dict:
        """The result as plain data, as a results file holds it."""
        return dataclasses.asdict(self)


def read_results(path: str | Path) -> SweepResult:
    """The sweep result in the results file `path`, or a RecordError naming the file."""
    return from_plain(SweepResult, read_json(path, "results file"), f"results file {path}")
