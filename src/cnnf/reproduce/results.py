"""A reproduced figure as typed records, saved as one JSON file that plots and tables read.

`FigureResult.to_plain()` is the file:
    {"figure", "profile", "claim", "notes": [...], "meta": {...},
     "models": [ModelRecord], "panels": [Panel], "strongest": [StrongestRow]}
Accuracies are in percent. `per_seed[i]` is training seed `seeds[i]`'s curve (each point
averaged over attack seeds); `mean` and `std` are over training seeds (std with ddof 1, 0 for
one seed); `attack_std` is the std over attack seeds, averaged over training seeds.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from cnnf.records import from_plain, read_json


@dataclass(kw_only=True)
class Series:
    """One line of a panel: mean and std over training seeds at each x, and every seed's values."""

    label: str
    model: str
    x: list[float]
    mean: list[float]
    std: list[float]
    attack_std: list[float]
    per_seed: list[list[float]]
    seeds: list[int]


@dataclass(kw_only=True)
class Panel:
    id: str
    title: str
    x_label: str
    y_label: str
    series: list[Series]


@dataclass(kw_only=True)
class ModelRecord:
    """A model of the figure: its full training config (seed 0's; other seeds differ in `seed`
    and, for fine-tunes, in `init_from`) and its training seeds."""

    name: str
    label: str
    config: dict
    seeds: list[int]


@dataclass(kw_only=True)
class StrongestRow:
    """A headline model's accuracy at `eps` under one evaluation (`evaluation`, e.g. "pgd40 e2e",
    "worst case"), on `images` test images, over training seeds."""

    model: str
    label: str
    eps: float
    evaluation: str
    images: int
    mean: float
    std: float
    per_seed: list[float]


@dataclass(kw_only=True)
class FigureResult:
    figure: str
    title: str
    profile: str
    claim: str
    notes: list[str]
    meta: dict
    models: list[ModelRecord]
    panels: list[Panel]
    strongest: list[StrongestRow]

    def to_plain(self) -> dict:
        return dataclasses.asdict(self)


def spread(values: list[float]) -> tuple[float, float]:
    """(mean, std) of values over training seeds; std with ddof 1, 0 for a single value."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def figure_path(out: Path, figure: str) -> Path:
    """Where figure `figure`'s record is written under the output folder `out`."""
    return Path(out) / "figures" / f"fig{figure}.json"


def write_figure(result: FigureResult, path: Path) -> Path:
    """Write `result` to `path` (through a temporary file, so a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result.to_plain(), indent=1))
    tmp.replace(path)
    return path


def read_figure(path: Path) -> FigureResult:
    """The figure record in `path`, or a RecordError naming the file."""
    return from_plain(FigureResult, read_json(path, "figure file"), f"figure file {path}")
