"""Evaluations of trained models, one JSON file each in the model's run folder
(OUT/models/NAME-seedS/eval/): a robustness sweep (`cnnf.evaluate.run_sweep`, resumable
through its progress file) or the corruption table. A file is reused when it was made for the
same `EvalUnit`; every figure that needs an evaluation shares it.

An attack evaluation's eps are the union of the grids of every panel, in every figure, that
shows that (model, attack, target), so figures share it whichever runs first. Every model is
scored at all its iteration counts 0..N, last and average output.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnf import checkpoint
from cnnf.accuracy import accuracy_per_iteration
from cnnf.attacks import parse_attacks
from cnnf.corruptions import CORRUPTIONS, corrupt_set
from cnnf.config import load_config
from cnnf.data import ImageSet, load_dataset
from cnnf.device import resolve_device
from cnnf.evaluate import Sweep, run_sweep
from cnnf.records import from_plain, read_json
from cnnf.reproduce.experiments import CONFIG_DIR, EXPERIMENTS, MODELS, PanelSpec, SeriesSpec
from cnnf.reproduce.profiles import Profile
from cnnf.reproduce.training import Report
from cnnf.results import SweepResult

CORRUPTION_SEED = 0
CORRUPTION_FILE = "corruptions.json"


@dataclass(frozen=True)
class EvalUnit:
    """One evaluation of one model and training seed: `attacks` x `targets` x `eps` on the
    first `subset` test images with `seeds` attack seeds, or (kind "corruptions") every
    corruption at severities 1..5."""

    kind: str  # "attack", "strongest" or "corruptions"
    attacks: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    eps: tuple[float, ...] = ()
    subset: int | None = None
    seeds: int = 1

    @property
    def filename(self) -> str:
        if self.kind == "corruptions":
            return CORRUPTION_FILE
        if self.kind == "strongest":
            return f"strongest-eps{max(self.eps):g}.json"
        return f"{'+'.join(self.attacks)}-{'+'.join(self.targets)}.json"

    def to_plain(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass(kw_only=True)
class CorruptionResult:
    """Accuracy (in [0, 1], last output) per corruption and severity 0..5 (0: clean) after each
    iteration count 0..N: accuracy[name][severity][t]."""

    meta: dict
    accuracy: dict[str, list[list[float]]]


def scored_target(model: str, target: str) -> str:
    """The target actually attacked: for a CNN (N = 0) the first pass is the whole model, so
    "e2e" is the same attack as "first" and shares its evaluation."""
    return "first" if iterations_of(model) == 0 else target


@functools.cache
def iterations_of(model: str) -> int:
    """The model's trained iteration count N (from its base config and overrides)."""
    spec = MODELS[model]
    return int(spec.overrides.get("iterations", load_config(CONFIG_DIR / spec.config).iterations))


def grid(panel: PanelSpec, profile: Profile) -> tuple[float, ...]:
    """The eps of a panel under `profile` (x values, or one line each on an iterations axis)."""
    return profile.eps_wide if panel.grid == "eps_wide" else profile.eps


def attack_unit(model: str, attack: str, target: str, profile: Profile) -> EvalUnit:
    """The evaluation that holds `model` under `attack` from `target` (module docstring)."""
    target = scored_target(model, target)
    eps = sorted({e for experiment in EXPERIMENTS.values() for panel in experiment.panels
                  for s in panel.series if _shows(s, model, attack, target) for e in grid(panel, profile)})
    return EvalUnit("attack", (attack,), (target,), tuple(eps), profile.test_subset,
                    1 if attack == "fgsm" else profile.attack_seeds)


def strongest_unit(model: str, eps: float, profile: Profile) -> EvalUnit:
    """PGD-40 (and AutoAttack, where the profile runs it) from the first pass and end to end."""
    attacks = ("pgd40", "autoattack") if profile.autoattack else ("pgd40",)
    targets = ("first",) if iterations_of(model) == 0 else ("first", "e2e")
    return EvalUnit("strongest", attacks, targets, (0.0, eps), profile.strongest_subset, profile.attack_seeds)


def corruption_unit(profile: Profile) -> EvalUnit:
    return EvalUnit("corruptions", subset=profile.corruption_subset)


def _shows(series: SeriesSpec, model: str, attack: str, target: str) -> bool:
    return series.model == model and series.measure == attack and scored_target(model, series.target) == target


def evaluate(folder: Path, unit: EvalUnit, profile: Profile, device: str | None, report: Report) -> Path:
    """The evaluation file of `unit` for the trained run in `folder`, made unless it exists."""
    path = folder / "eval" / unit.filename
    if path.is_file() and read_json(path, "evaluation file").get("meta", {}).get("unit") == unit.to_plain():
        return path
    report(f"evaluating {folder.name}: {unit.filename}")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = checkpoint.read(folder / "model.pt")
    model = checkpoint.model_from_state(state, folder / "model.pt").to(resolve_device(device or "auto"))
    images = _test_images(state["config"], unit.subset)
    start = time.perf_counter()
    if unit.kind == "corruptions":
        plain = dataclasses.asdict(CorruptionResult(meta={}, accuracy=corruption_accuracy(model, images)))
    else:
        plain = _sweep(model, images, unit, profile, path, report).to_plain()
    plain["meta"].update(unit=unit.to_plain(), wall_seconds=time.perf_counter() - start, images=len(images))
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(plain, indent=1))
    tmp.replace(path)
    return path


def corruption_accuracy(model, images: ImageSet) -> dict[str, list[list[float]]]:
    """accuracy[name][severity][t] of `model` (last output) on `images` corrupted by every
    corruption at severities 0 (clean) .. 5."""
    clean = accuracy_per_iteration(model, images, model.iterations)["last"]
    return {name: [clean] + [accuracy_per_iteration(model, corrupt_set(images, name, severity, CORRUPTION_SEED),
                                                    model.iterations)["last"] for severity in range(1, 6)]
            for name in CORRUPTIONS}


def read_corruptions(path: Path) -> CorruptionResult:
    return from_plain(CorruptionResult, read_json(path, "corruption file"), f"corruption file {path}")


def _sweep(model, images: ImageSet, unit: EvalUnit, profile: Profile, path: Path, report: Report) -> SweepResult:
    sweep = Sweep(attacks=parse_attacks(",".join(profile.attack(a) for a in unit.attacks)),
                  targets=list(unit.targets), eps=list(unit.eps), iterations=list(range(model.iterations + 1)),
                  seeds=list(range(unit.seeds)))
    return run_sweep(model, images, sweep, progress=path.with_suffix(".progress.pt"), report=report)


def _test_images(config: dict, subset: int | None) -> ImageSet:
    test = load_dataset(config["dataset"], config.get("data_dir"))["test"]
    return test if subset is None else test.subset(torch.arange(min(subset, len(test))))
