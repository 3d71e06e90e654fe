"""`reproduce(figure, ...)`: train what a figure needs, evaluate it, write its record
(OUT/figures/figF.json) and draw it (figF.png) from that record. Every stage skips what is
already done, so an interrupted command resumes when run again."""

from __future__ import annotations

import datetime
import os
import platform
import time
from pathlib import Path

import torch

from cnnf.model_card import git_revision
from cnnf.records import read_json
from cnnf.reproduce.aggregate import build_figure
from cnnf.reproduce.evaluations import attack_unit, corruption_unit, evaluate, strongest_unit
from cnnf.reproduce.experiments import Experiment
from cnnf.reproduce.figures import draw_figure
from cnnf.reproduce.profiles import Profile
from cnnf.reproduce.results import figure_path, write_figure
from cnnf.reproduce.training import Report, ensure_trained, run_dir, train_seconds


def reproduce(experiment: Experiment, profile: Profile, seeds: list[int], out: Path, device: str | None,
              command: str, report: Report) -> Path:
    """Run figure `experiment` under `profile` with training `seeds`; returns its record's path."""
    clock = _Clock()
    for name in experiment.models():
        for seed in seeds:
            with clock("train"):
                ensure_trained(name, seed, profile, out, device, report)
            with clock("evaluate"):
                for unit in _units(experiment, name, profile):
                    evaluate(run_dir(out, name, seed), unit, profile, device, report)
    meta = {**host_meta(), "command": command, "wall_seconds": clock.seconds,
            "compute_seconds": compute_seconds(experiment, seeds, out)}
    result = build_figure(experiment, profile, seeds, out, meta)
    path = write_figure(result, figure_path(out, experiment.figure))
    draw_figure(path, path.with_suffix(".png"))
    report(f"wrote {path} and {path.with_suffix('.png')}")
    return path


def _units(experiment: Experiment, model: str, profile: Profile) -> list:
    """The evaluations of `model` that `experiment` reads, each once."""
    units = []
    for panel in experiment.panels:
        for s in (s for s in panel.series if s.model == model):
            units.append(corruption_unit(profile) if panel.x == "severity" else attack_unit(model, s.measure, s.target, profile))
    units += [strongest_unit(model, eps, profile) for m, eps in experiment.strongest if m == model]
    return list(dict.fromkeys(units))


def compute_seconds(experiment: Experiment, seeds: list[int], out: Path) -> dict[str, float]:
    """Seconds the figure's models took to train and evaluate, whenever that was done
    (evaluations of other figures' panels in the same folders included)."""
    folders = [run_dir(out, name, seed) for name in experiment.models() for seed in seeds]
    evaluations = [path for folder in folders for path in sorted((folder / "eval").glob("*.json"))]
    return {"train": sum(train_seconds(folder) for folder in folders),
            "evaluate": sum(_wall_seconds(path) for path in evaluations)}


def _wall_seconds(path: Path) -> float:
    return float(read_json(path, "evaluation file")["meta"].get("wall_seconds", 0.0))


def host_meta() -> dict:
    """Code revision, host, torch and date of this run."""
    return {"git_revision": git_revision(), "host": {"platform": platform.platform(), "cpu": _cpu_model(),
                                                      "cores": os.cpu_count(), "threads": torch.get_num_threads()},
            "torch": torch.__version__, "date": datetime.datetime.now().isoformat(timespec="seconds")}


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


class _Clock:
    """Wall seconds per stage: `with clock("train"): ...` adds the block's time to "train"."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._stage = ""
        self._start = 0.0

    def __call__(self, stage: str) -> _Clock:
        self._stage = stage
        return self

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.seconds[self._stage] = self.seconds.get(self._stage, 0.0) + time.perf_counter() - self._start
