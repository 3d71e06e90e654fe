"""From evaluation files to a figure record: per (series, x) the accuracy of each training
seed (averaged over attack seeds), then mean and std over training seeds (`results.spread`)."""

from __future__ import annotations

from pathlib import Path

from cnnf.reproduce.evaluations import (CORRUPTION_FILE, attack_unit, grid, iterations_of, read_corruptions,
                                        scored_target, strongest_unit)
from cnnf.reproduce.experiments import MEAN_CORRUPTION, MODELS, Experiment, PanelSpec, SeriesSpec
from cnnf.reproduce.profiles import Profile
from cnnf.reproduce.results import FigureResult, ModelRecord, Panel, Series, StrongestRow, spread
from cnnf.reproduce.training import model_config, run_dir
from cnnf.results import read_results

X_LABELS = {"eps": "ε ([0, 1] units)", "iterations": "iterations N at evaluation", "severity": "severity (0: clean)"}
Point = tuple[float, float]  # (accuracy, its std over attack seeds), in percent


def build_figure(experiment: Experiment, profile: Profile, seeds: list[int], out: Path, meta: dict) -> FigureResult:
    """The record of `experiment` from the evaluations under `out` of training `seeds`."""
    models = [ModelRecord(name=name, label=MODELS[name].label, seeds=seeds,
                          config=model_config(name, profile, seeds[0], out).to_dict()) for name in experiment.models()]
    return FigureResult(
        figure=experiment.figure, title=experiment.title, profile=profile.name, claim=experiment.claim,
        notes=profile.notes(), meta=meta, models=models,
        panels=[_panel(panel, profile, seeds, out) for panel in experiment.panels],
        strongest=[row for model, eps in experiment.strongest for row in _strongest(model, eps, profile, seeds, out)],
    )


def _panel(panel: PanelSpec, profile: Profile, seeds: list[int], out: Path) -> Panel:
    series = [line for spec in panel.series for line in _series(spec, panel, profile, seeds, out)]
    return Panel(id=panel.id, title=profile.title(panel.title), x_label=X_LABELS[panel.x], y_label="accuracy (%)", series=series)


def _series(spec: SeriesSpec, panel: PanelSpec, profile: Profile, seeds: list[int], out: Path) -> list[Series]:
    """The panel's lines for `spec`: one, or one per nonzero eps on an iterations axis."""
    n = iterations_of(spec.model) if spec.iterations is None else spec.iterations
    if panel.x == "severity":
        points = [_corruption_points(spec, n, run_dir(out, spec.model, s)) for s in seeds]
        return [_line(spec.label, spec.model, list(range(6)), points, seeds)]
    tables = [_attack_points(spec, profile, run_dir(out, spec.model, s)) for s in seeds]
    eps_grid = grid(panel, profile)
    if panel.x == "eps":
        return [_line(spec.label, spec.model, list(eps_grid), [[t[(e, n)] for e in eps_grid] for t in tables], seeds)]
    label = f"{spec.label}, " if spec.label else ""
    return [_line(f"{label}ε = {e:g}", spec.model, list(range(n + 1)), [[t[(e, i)] for i in range(n + 1)] for t in tables],
                  seeds) for e in eps_grid if e > 0]


def _line(label: str, model: str, x: list[float], points: list[list[Point]], seeds: list[int]) -> Series:
    """A Series from per-seed points (seed-major)."""
    spreads = [spread([seed[i][0] for seed in points]) for i in range(len(x))]
    attack_std = [spread([seed[i][1] for seed in points])[0] for i in range(len(x))]
    return Series(label=label, model=model, x=x, mean=[m for m, _ in spreads], std=[s for _, s in spreads],
                  attack_std=attack_std, per_seed=[[p[0] for p in seed] for seed in points], seeds=seeds)


def _attack_points(spec: SeriesSpec, profile: Profile, folder: Path) -> dict[tuple[float, int], Point]:
    """{(eps, iterations): point} of `spec`'s attack for the run in `folder` (last output)."""
    unit = attack_unit(spec.model, spec.measure, spec.target, profile)
    result = read_results(folder / "eval" / unit.filename)
    target = scored_target(spec.model, spec.target)
    return {(r.eps, r.iterations): (100 * r.accuracy_mean, 100 * r.accuracy_std) for r in result.rows
            if r.attack == profile.attack(spec.measure) and r.target == target and r.output == "last"}


def _corruption_points(spec: SeriesSpec, n: int, folder: Path) -> list[Point]:
    """Accuracy at severities 0..5 after n iterations: one corruption, or their mean."""
    accuracy = read_corruptions(folder / "eval" / CORRUPTION_FILE).accuracy
    names = list(accuracy) if spec.measure == MEAN_CORRUPTION else [spec.measure]
    return [(100 * sum(accuracy[name][severity][n] for name in names) / len(names), 0.0) for severity in range(6)]


def _strongest(model: str, eps: float, profile: Profile, seeds: list[int], out: Path) -> list[StrongestRow]:
    """Rows of the strongest evaluation of `model` at `eps`: clean, each attack and target on
    the scored output (N, last), and the worst case over all of them."""
    n = iterations_of(model)
    results = [read_results(run_dir(out, model, s) / "eval" / strongest_unit(model, eps, profile).filename) for s in seeds]
    per_seed: dict[str, list[float]] = {}
    images = {}
    for result in results:
        for r in result.rows:
            if r.iterations == n and r.output == "last" and r.attacked_output is not False:
                name = _evaluation_name(r.attack, r.target, r.eps)
                if name is not None:
                    per_seed.setdefault(name, []).append(100 * r.accuracy_mean)
                    images[name] = r.images
    return [StrongestRow(model=model, label=MODELS[model].label, eps=eps, evaluation=name, images=images[name],
                         mean=spread(values)[0], std=spread(values)[1], per_seed=values) for name, values in per_seed.items()]


def _evaluation_name(attack: str, target: str, eps: float) -> str | None:
    """The column of a strongest-evaluation row (its eps are 0 and the headline eps): "clean"
    at eps 0 (once), else the attack and target, or "worst case"."""
    if eps == 0:
        return "clean" if attack == "worst-case" else None
    return "worst case" if attack == "worst-case" else f"{attack} {target}"
