"""Robustness sweeps: every (attack, target, eps) generated once, then scored at every iteration
count and output mode on the same adversarial images. Results are records (`cnnf.results`),
saved as JSON that plots read.

eps is in [0, 1] image units (the L-inf radius in the model's [-1, 1] range is 2 * eps).
"e2e" attacks differentiate the model at its own N and output mode; rows scored at another
iteration count or mode from the same images are transfers (Row.attacked_output False).
The "worst-case" rows count an image as robust only if it survives every attack and target run.

In a group of processes (`cnnf.distributed`), the processes take the batches in turns (batch b
on process b mod world size, the same images and attack seeds as in one process) and every
process gathers every batch's flags, so the results are those of one process; only the main
process writes the progress file.
"""

from __future__ import annotations

import datetime
import itertools
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnf import distributed
from cnnf.attacks import TARGETS, AttackSpec, GradientSource, gradient_source
from cnnf.attacks.threat import check_eps
from cnnf.data import ImageSet
from cnnf.device import device_of
from cnnf.inputs import check_count
from cnnf.model import CNNF
from cnnf.model_card import git_revision
from cnnf.precision import autocast, check_precision, full
from cnnf.results import Check, Curve, Row, SweepResult
from cnnf.scoring import OUTPUTS, Scoring, check_output, scores_per_step
from cnnf.sweep_progress import AttackRun, Flags, RunKey, SweepProgress, fingerprint

NOISE_POINTS = 1.0  # accuracy differences below this many points count as noise in sanity checks


@dataclass
class Sweep:
    """What to run: attacks x targets x eps, scored at `iterations` x `outputs`, over `seeds`."""

    attacks: list[AttackSpec]
    targets: list[str]
    eps: list[float]
    iterations: list[int]
    outputs: tuple[str, ...] = OUTPUTS
    seeds: list[int] = field(default_factory=lambda: [0])
    batch_size: int = 250
    early_stop: bool = True  # "e2e" PGD keeps each image's first misclassified iterate
    precision: str = "fp32"  # "bf16": the model (attacked and scored) under bfloat16 autocast
    attacked: Scoring | None = None  # what "e2e" differentiates: the model's N and output (set by run_sweep)

    def __post_init__(self):
        for name in ("attacks", "targets", "eps", "iterations", "outputs", "seeds"):
            if not getattr(self, name):
                raise ValueError(f"a sweep needs at least one value in {name}, got none")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown:
            raise ValueError(f"unknown target(s) {', '.join(map(str, unknown))}; choose from {', '.join(TARGETS)}")
        for eps in self.eps:
            check_eps(eps)
        for t in self.iterations:
            check_count(t, "iterations", minimum=0)
        for seed in self.seeds:
            check_count(seed, "seeds", minimum=0)
        for mode in self.outputs:
            check_output(mode)
        check_count(self.batch_size, "batch_size")
        check_precision(self.precision)

    def run_keys(self) -> list[RunKey]:
        """Every attack run, seed by seed (a partial sweep has all settings of its first seeds)."""
        runs = itertools.product(self.seeds, self.attacks, self.targets, self.eps)
        return [RunKey(seed, spec.name, target, eps) for seed, spec, target, eps in runs]

    def scorings(self) -> list[Scoring]:
        """Every (iterations, output) the images are scored at."""
        return [Scoring(t, mode) for t in self.iterations for mode in self.outputs]


@dataclass(frozen=True)
class Attacker:
    """What attacks the images of run `key`: the attack and the function it differentiates."""

    spec: AttackSpec
    source: GradientSource
    key: RunKey


def run_sweep(
    model: CNNF,
    images: ImageSet,
    sweep: Sweep,
    cnn: CNNF | None = None,
    progress: Path | None = None,
    report: Callable[[str], None] | None = None,
    pieces: tuple[Path, ...] = (),
    keep_progress: bool = False,
) -> SweepResult:
    """Run `sweep` on `images` (at least one).

    progress: a file to save finished attack runs and batches in; an interrupted sweep called
    again with the same file, model, images and settings skips what is already there. The file
    is deleted when the sweep completes.
    report: called with one line per finished attack run, and one on resuming from `progress`
    (e.g. print, for long sweeps).
    pieces: progress files of parts of this same sweep run in other processes (e.g. other eps
    on another core); their finished runs are taken instead of being run again.
    keep_progress: keep the progress file when the sweep completes (a piece to merge later).
    """
    if len(images) == 0:
        raise ValueError("a sweep needs at least one image, got an empty image set (0 images)")
    model.eval()
    sweep.attacked = Scoring(model.iterations, model.output)
    sources = {target: gradient_source(model, target, cnn=cnn, precision=sweep.precision) for target in sweep.targets}
    meta = _meta(model, images, sweep)  # git revision and date of the code that starts the sweep
    resuming = progress is not None and progress.exists()
    saved = SweepProgress(progress, _fingerprint(model, images, sweep, cnn), writes=distributed.is_main())
    distributed.barrier()  # every process has read the progress file before the main one writes it
    if resuming and report is not None:
        report(f"resuming the sweep saved in {progress}")
    for piece in pieces:
        saved.absorb(piece)
    clean = _robust_flags(model, images, sweep, attacker=None)
    specs = {spec.name: spec for spec in sweep.attacks}
    runs: dict[RunKey, AttackRun] = {}
    for key in sweep.run_keys():
        run = saved.get(key)
        resumed = run is not None
        if not resumed:
            run = _attack_run(model, images, sweep, Attacker(specs[key.attack], sources[key.target], key), saved)
            saved.put(key, run)
        runs[key] = run
        if report is not None:
            report(_run_line(key, run, resumed))
    rows = _rows(runs, sweep) + _worst_case_rows(runs, sweep)
    result = SweepResult(meta, {str(s): f.double().mean().item() for s, f in clean.items()}, rows, [])
    result.sanity = sanity_checks(result, model, images, sweep, cnn)
    result.meta["resumed_runs"] = len(saved.resumed)
    if not keep_progress:
        saved.finish()
    return result


def _run_line(key: RunKey, run: AttackRun, resumed: bool) -> str:
    """One line on a finished run: accuracy at the last scored (iterations, output) pair."""
    scoring, correct = max(run.flags.items(), key=lambda item: (item[0].iterations, item[0].output == "last"))
    return (f"{key.attack} {key.target} eps={key.eps} seed={key.seed}: {100 * correct.double().mean().item():.2f}% "
            f"at N={scoring.iterations} {scoring.output}, {run.seconds:.0f} s{' (saved earlier)' if resumed else ''}")


def _fingerprint(model: CNNF, images: ImageSet, sweep: Sweep, cnn: CNNF | None) -> str:
    settings = {
        "model_settings": model.settings(), "iterations": sweep.iterations, "outputs": sweep.outputs,
        "batch_size": sweep.batch_size, "early_stop": sweep.early_stop,
        "attacks": [(s.name, s.steps, s.restarts, dict(s.options)) for s in sweep.attacks],
    }
    if sweep.precision != "fp32":  # fp32 sweeps keep the fingerprint of sweeps saved before the setting
        settings["precision"] = sweep.precision
    return fingerprint([model] + ([cnn] if cnn is not None else []), images.images, images.labels, settings)


def _robust_flags(model: CNNF, images: ImageSet, sweep: Sweep, attacker: Attacker | None) -> Flags:
    """Per scoring: a bool per image, True where the prediction is correct."""
    batches = range(-(-len(images) // sweep.batch_size))
    done = {index: flags for turn in _turns(model, images, sweep, attacker, batches) for index, flags, _ in turn}
    return _concatenate([done[i] for i in sorted(done)])


def _attack_run(model: CNNF, images: ImageSet, sweep: Sweep, attacker: Attacker, saved: SweepProgress) -> AttackRun:
    """`_robust_flags` of one attack run and its seconds (summed over batches, and so over
    processes), batch by batch; each finished batch is saved, so an interrupted run resumes at
    the batch where it stopped."""
    done, seconds = saved.partial(attacker.key)
    todo = [index for index in range(-(-len(images) // sweep.batch_size)) if index not in done]
    for turn in _turns(model, images, sweep, attacker, todo):
        for index, flags, batch_seconds in turn:
            done[index] = flags
            seconds += batch_seconds
            saved.put_batch(attacker.key, index, flags, seconds)
    return AttackRun(_concatenate([done[i] for i in sorted(done)]), seconds)


def _turns(model: CNNF, images: ImageSet, sweep: Sweep, attacker: Attacker | None,
           batches: list[int] | range) -> Iterator[list[tuple[int, Flags, float]]]:
    """The `batches` (indices) in turns of one batch per process; yields each turn's (index,
    flags, seconds) of every process, in batch order (one batch per turn in one process)."""
    rank, processes = distributed.part()
    for start in range(0, len(batches), processes):
        turn = batches[start : start + processes]
        mine = None
        if rank < len(turn):
            x, y = _batch(images, turn[rank], sweep.batch_size)
            begin = time.perf_counter()
            flags = _batch_flags(model, x, y, sweep, attacker, turn[rank])
            mine = (turn[rank], flags, time.perf_counter() - begin)
        yield [result for result in distributed.all_gather(mine) if result is not None]


def _batch(images: ImageSet, index: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch number `index` of `images.batches(batch_size)`."""
    part = images.subset(torch.arange(index * batch_size, min((index + 1) * batch_size, len(images))))
    return next(part.batches(len(part)))


def _batch_flags(model: CNNF, x: torch.Tensor, y: torch.Tensor, sweep: Sweep, attacker: Attacker | None,
                 batch: int) -> Flags:
    """Per scoring: correct predictions on batch number `batch`, attacked by `attacker` or clean
    (None), computed on the model's device and returned on the CPU (as progress files keep them)."""
    x, y = x.to(device_of(model)), y.to(device_of(model))
    if attacker is not None and attacker.key.eps > 0:  # at eps = 0 every attack returns x
        spec, key = attacker.spec, attacker.key
        generator = torch.Generator().manual_seed(key.seed * 1_000_003 + batch)
        x = spec.run(attacker.source, x, y, key.eps, generator, early_stop=_early_stop(sweep, spec, key.target))
    with torch.inference_mode(), autocast(sweep.precision, x.device):
        logits = full(torch.stack(model.infer(x, iterations=max(sweep.iterations)).logits))  # (N + 1, B, classes)
    correct = {mode: scores_per_step(logits, mode).argmax(-1) == y for mode in sweep.outputs}  # (N + 1, B)
    return {s: correct[s.output][s.iterations].cpu() for s in sweep.scorings()}


def _concatenate(batches: list[Flags]) -> Flags:
    return {scoring: torch.cat([b[scoring] for b in batches]) for scoring in batches[0]}


def _early_stop(sweep: Sweep, spec: AttackSpec, target: str) -> bool:
    """An attack that can stop early (PGD) does so only where the attacked function is the
    scored one ("e2e")."""
    return sweep.early_stop and target == "e2e" and spec.stops_early


def _rows(runs: dict[RunKey, AttackRun], sweep: Sweep) -> list[Row]:
    """A row per (attack, target, eps) and scoring, over the seeds."""
    rows = []
    for spec, target, eps in itertools.product(sweep.attacks, sweep.targets, sweep.eps):
        seeded = [runs[RunKey(seed, spec.name, target, eps)] for seed in sweep.seeds]
        for scoring in sweep.scorings():
            rows.append(Row(
                attack=spec.name, target=target, eps=eps, steps=spec.steps, restarts=spec.restarts,
                step_size=spec.step_size(eps), early_stop=_early_stop(sweep, spec, target),
                iterations=scoring.iterations, output=scoring.output,
                attacked_output=target != "e2e" or scoring == sweep.attacked,
                **_accuracies([run.flags[scoring] for run in seeded]),
                seconds=statistics.fmean(run.seconds for run in seeded),
            ))
    return rows


def _worst_case_rows(runs: dict[RunKey, AttackRun], sweep: Sweep) -> list[Row]:
    """A row per eps and scoring: robust only against every attack and target, seed by seed."""
    rows = []
    for eps, scoring in itertools.product(sweep.eps, sweep.scorings()):
        runs_per_seed = [[run.flags[scoring] for key, run in runs.items() if key.eps == eps and key.seed == seed]
                         for seed in sweep.seeds]
        per_seed = [torch.stack(flags).all(0) for flags in runs_per_seed]
        rows.append(Row(
            attack="worst-case", target="all", eps=eps, steps=None, restarts=None, step_size=None,
            iterations=scoring.iterations, output=scoring.output, attacked_output=None,
            **_accuracies(per_seed), seconds=None,
        ))
    return rows


def _accuracies(per_seed: list[torch.Tensor]) -> dict:
    """A row's image count and accuracies from the per-seed flags of its images."""
    accs = [f.double().mean().item() for f in per_seed]
    return {"images": len(per_seed[0]), "accuracy_mean": statistics.fmean(accs),
            "accuracy_std": statistics.pstdev(accs), "accuracies": accs}


def sanity_checks(result: SweepResult, model: CNNF, images: ImageSet, sweep: Sweep, cnn: CNNF | None) -> list[Check]:
    """The checks every evaluation prints and stores."""
    rows = [r for r in result.rows if r.attack != "worst-case"]
    checks = []
    for r in (r for r in rows if r.eps == 0):
        clean = result.clean[str(Scoring(r.iterations, r.output))]
        checks.append(Check(check="accuracy at eps 0 equals clean accuracy", passed=abs(r.accuracy_mean - clean) < 1e-12,
                            detail=f"{r.attack}/{r.target} N={r.iterations} {r.output}: "
                                   f"{r.accuracy_mean:.4f} vs {clean:.4f}"))
    for curve, points in _curves(rows).items():
        accs = [100 * acc for _, acc in sorted(points.items())]
        rises = [b - a for a, b in zip(accs, accs[1:]) if b - a > NOISE_POINTS]
        checks.append(Check(check="accuracy does not rise with eps", passed=not rises,
                            detail=f"{curve}: {[round(a, 2) for a in accs]}"))
    checks += _strength_order(rows)
    checks += _gradient_checks(model, images, sweep, cnn)
    return checks


def _curves(rows: list[Row]) -> dict[Curve, dict[float, float]]:
    """Accuracy (mean over seeds) per curve and eps."""
    curves: dict[Curve, dict[float, float]] = {}
    for r in rows:
        curves.setdefault(r.curve, {})[r.eps] = r.accuracy_mean
    return curves


def _strength_order(rows: list[Row]) -> list[Check]:
    """PGD-40 no weaker than PGD-7, PGD-7 no weaker than FGSM (same target, eps, N, output), and
    e2e not much weaker than first-pass transfer. e2e rows scored at another N or output than
    the attacked one are transfers and are not compared."""
    curves = _curves([r for r in rows if r.attacked_output])
    checks = []
    for weak, strong in (("fgsm", "pgd7"), ("pgd7", "pgd40"), ("fgsm", "pgd40")):
        for curve in (c for c in curves if c.attack == strong):
            weaker = curves.get(replace(curve, attack=weak), {})
            for eps, acc in curves[curve].items():
                if eps > 0 and eps in weaker:
                    checks.append(Check(check=f"{strong} no weaker than {weak}",
                                        passed=100 * (acc - weaker[eps]) <= NOISE_POINTS,
                                        detail=f"{curve.target} eps={eps} N={curve.iterations} {curve.output}: "
                                               f"{100 * acc:.2f}% vs {100 * weaker[eps]:.2f}%"))
    for curve in (c for c in curves if c.target == "e2e"):
        first = curves.get(replace(curve, target="first"), {})
        for eps, acc in curves[curve].items():
            if eps in first and 100 * (acc - first[eps]) > 10:
                checks.append(Check(check="end-to-end attack not much weaker than transfer (gradient masking?)",
                                    passed=False, warning=True,
                                    detail=f"{curve.attack} eps={eps} N={curve.iterations} {curve.output}: "
                                           f"e2e {100 * acc:.2f}% vs first-pass {100 * first[eps]:.2f}%"))
    return checks


def _gradient_checks(model: CNNF, images: ImageSet, sweep: Sweep, cnn: CNNF | None) -> list[Check]:
    x, y = next(images.batches(min(len(images), 32)))
    x, y = x.to(device_of(model)), y.to(device_of(model))
    checks = []
    for target in sweep.targets:
        x_ = x.clone().requires_grad_(True)
        loss = F.cross_entropy(gradient_source(model, target, cnn=cnn, precision=sweep.precision)(x_), y)
        (grad,) = torch.autograd.grad(loss, x_)
        norm = grad.abs().sum().item()
        checks.append(Check(check=f"{target} gradients are non-zero", passed=norm > 0,
                            detail=f"sum |dL/dx| = {norm:.3e} on {len(x)} images"))
    return checks


def _meta(model: CNNF, images: ImageSet, sweep: Sweep) -> dict:
    return {
        "model_settings": model.settings(), "images": len(images), "seeds": sweep.seeds,
        "eps_units": "[0, 1] image units; the L-inf radius in the model's [-1, 1] range is 2 * eps",
        "attacks": [{"name": s.name, "steps": s.steps, "restarts": s.restarts, "gradient_free": s.gradient_free} for s in sweep.attacks],
        "targets": sweep.targets, "precision": sweep.precision, "git_revision": git_revision(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "threads": torch.get_num_threads(),
        "processes": distributed.world_size(),
    }


def format_table(result: SweepResult) -> str:
    """The results and sanity checks as plain text, one row per (attack, target, eps, N, output)."""
    lines = [f"{'attack':<11}{'target':<7}{'eps':>6}{'N':>4} {'output':<8}{'accuracy':>18}{'images':>8}{'seconds':>9}"]
    for r in result.rows:
        acc = f"{100 * r.accuracy_mean:.2f} ± {100 * r.accuracy_std:.2f}%"
        secs = "" if r.seconds is None else f"{r.seconds:.1f}"
        lines.append(f"{r.attack:<11}{r.target:<7}{r.eps:>6.3f}{r.iterations:>4} {r.output:<8}{acc:>18}{r.images:>8}{secs:>9}")
    lines.append("sanity checks:")
    for name in dict.fromkeys(c.check for c in result.sanity):
        group = [c for c in result.sanity if c.check == name]
        failed = [c for c in group if not c.passed]
        status = "ok  " if not failed else ("WARN" if failed[0].warning else "FAIL")
        lines.append(f"  [{status}] {name}: {len(group) - len(failed)}/{len(group)} passed")
        lines += [f"         {c.detail}" for c in failed]
    return "\n".join(lines)
