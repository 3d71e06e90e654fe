"""Robustness sweeps: every (attack, target, eps) generated once, then scored at every iteration
count and output mode on the same adversarial images. Results are data (JSON) that plots read.

A row of results:
    {"attack", "target", "eps", "steps", "restarts", "step_size", "iterations", "output",
     "attacked_output", "images", "accuracy_mean", "accuracy_std", "accuracies", "seconds"}
"e2e" attacks differentiate the model at its own N and output mode; rows scored at another
iteration count or mode from the same images have attacked_output = False (a transfer).
eps is in [0, 1] image units (the L-inf radius in the model's [-1, 1] range is 2 * eps).
The "worst-case" rows count an image as robust only if it survives every attack and target run.
"""

from __future__ import annotations

import datetime
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnf.attacks import AttackSpec, gradient_source
from cnnf.data import ImageSet
from cnnf.model import CNNF
from cnnf.model_card import git_revision
from cnnf.scoring import OUTPUTS, scores_per_step
from cnnf.sweep_progress import SweepProgress, fingerprint

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
    attacked_iterations: int | None = None  # what "e2e" differentiates: the model's N ...
    attacked_output: str | None = None      # ... and output mode (set by run_sweep)


def run_sweep(
    model: CNNF,
    images: ImageSet,
    sweep: Sweep,
    cnn: CNNF | None = None,
    progress: Path | None = None,
    report: Callable[[str], None] | None = None,
    pieces: tuple[Path, ...] = (),
    keep_progress: bool = False,
) -> dict:
    """Run `sweep` on `images`; returns {"meta", "clean", "rows", "sanity"}.

    progress: a file to save finished attack runs and batches in; an interrupted sweep called
    again with the same file, model, images and settings skips what is already there. The file
    is deleted when the sweep completes.
    report: called with one line per finished attack run (e.g. print, for long sweeps).
    pieces: progress files of parts of this same sweep run in other processes (e.g. other eps
    on another core); their finished runs are taken instead of being run again.
    keep_progress: keep the progress file when the sweep completes (a piece to merge later).
    """
    model.eval()
    sweep.attacked_iterations, sweep.attacked_output = model.iterations, model.output
    meta = _meta(model, images, sweep)  # git revision and date of the code that starts the sweep
    saved = SweepProgress(progress, _fingerprint(model, images, sweep, cnn))
    for piece in pieces:
        saved.absorb(piece)
    clean = _robust_flags(model, images, sweep, adversary=None)
    survived: dict[tuple, list[torch.Tensor]] = {}  # (attack, target, eps, t, mode) -> per seed flags
    seconds: dict[tuple, float] = {}
    for seed in sweep.seeds:
        for spec in sweep.attacks:
            for target in sweep.targets:
                model_fn = gradient_source(model, target, cnn=cnn)
                for eps in sweep.eps:
                    key = (spec.name, target, eps)
                    done = saved.get((seed, *key))
                    resumed = done is not None
                    if not resumed:
                        done = _attack_run(model, images, sweep, (spec, model_fn, eps, seed), saved, (seed, *key))
                        saved.put((seed, *key), *done)
                    flags, elapsed = done
                    if report is not None:
                        report(_run_line(seed, key, flags, elapsed, resumed))
                    seconds[key] = seconds.get(key, 0.0) + elapsed
                    for (t, mode), f in flags.items():
                        survived.setdefault((*key, t, mode), []).append(f)
    rows = [_row(key, flags, sweep, seconds) for key, flags in survived.items()]
    rows += _worst_case_rows(survived, sweep)
    clean_acc = {f"{t}/{mode}": f.double().mean().item() for (t, mode), f in clean.items()}
    result = {"meta": meta, "clean": clean_acc, "rows": rows}
    result["sanity"] = sanity_checks(result, model, images, sweep, cnn)
    result["meta"]["resumed_runs"] = len(saved.resumed)
    if not keep_progress:
        saved.finish()
    return result


def _run_line(seed: int, key: tuple, flags: dict, seconds: float, resumed: bool) -> str:
    """One line on a finished run: accuracy at the last scored (iterations, output) pair."""
    (t, mode), correct = max(flags.items(), key=lambda item: (item[0][0], item[0][1] == "last"))
    attack, target, eps = key
    return (f"{attack} {target} eps={eps} seed={seed}: {100 * correct.double().mean().item():.2f}% "
            f"at N={t} {mode}, {seconds:.0f} s{' (saved earlier)' if resumed else ''}")


def _fingerprint(model: CNNF, images: ImageSet, sweep: Sweep, cnn: CNNF | None) -> str:
    settings = {
        "model_settings": model.settings(), "iterations": sweep.iterations, "outputs": sweep.outputs,
        "batch_size": sweep.batch_size, "early_stop": sweep.early_stop,
        "attacks": [(s.name, s.steps, s.restarts, dict(s.options)) for s in sweep.attacks],
    }
    return fingerprint([model] + ([cnn] if cnn is not None else []), images.images, images.labels, settings)


def _robust_flags(model: CNNF, images: ImageSet, sweep: Sweep, adversary) -> dict[tuple, torch.Tensor]:
    """Per (iterations, output mode): a bool per image, True where the prediction is correct."""
    batches = [_batch_flags(model, x, y, sweep, adversary, i) for i, (x, y) in enumerate(images.batches(sweep.batch_size))]
    return _concatenate(batches)


def _attack_run(model: CNNF, images: ImageSet, sweep: Sweep, adversary, saved: SweepProgress, key) -> tuple[dict, float]:
    """`_robust_flags` of one (seed, attack, target, eps) run and its seconds, batch by batch;
    each finished batch is saved, so an interrupted run resumes at the batch where it stopped."""
    done, seconds = saved.partial(key)
    for index, (x, y) in enumerate(images.batches(sweep.batch_size)):
        if index not in done:
            start = time.perf_counter()
            done[index] = _batch_flags(model, x, y, sweep, adversary, index)
            seconds += time.perf_counter() - start
            saved.put_batch(key, index, done[index], seconds)
    return _concatenate([done[i] for i in sorted(done)]), seconds


def _batch_flags(model: CNNF, x: torch.Tensor, y: torch.Tensor, sweep: Sweep, adversary, batch: int) -> dict[tuple, torch.Tensor]:
    """Per (iterations, output mode): correct predictions on batch number `batch`, attacked
    by `adversary` = (spec, model_fn, eps, seed) or clean (None)."""
    if adversary is not None and adversary[2] > 0:  # at eps = 0 every attack returns x
        spec, model_fn, eps, seed = adversary
        generator = torch.Generator().manual_seed(seed * 1_000_003 + batch)
        x = spec.run(model_fn, x, y, eps, generator, early_stop=_early_stop(sweep, spec, model_fn.target))
    with torch.inference_mode():
        logits = torch.stack(model.infer(x, iterations=max(sweep.iterations), drives_only=True).logits)  # (N + 1, B, classes)
    correct = {mode: scores_per_step(logits, mode).argmax(-1) == y for mode in sweep.outputs}  # (N + 1, B)
    return {(t, mode): correct[mode][t] for t in sweep.iterations for mode in sweep.outputs}


def _concatenate(batches: list[dict[tuple, torch.Tensor]]) -> dict[tuple, torch.Tensor]:
    return {key: torch.cat([b[key] for b in batches]) for key in batches[0]}


def _early_stop(sweep: Sweep, spec: AttackSpec, target: str) -> bool:
    """An attack that can stop early (PGD) does so only where the attacked function is the
    scored one ("e2e")."""
    return sweep.early_stop and target == "e2e" and spec.stops_early


def _row(key: tuple, flags: list[torch.Tensor], sweep: Sweep, seconds: dict) -> dict:
    name, target, eps, t, mode = key
    spec = next(s for s in sweep.attacks if s.name == name)
    accs = [f.double().mean().item() for f in flags]
    return {
        "attack": name, "target": target, "eps": eps, "steps": spec.steps, "restarts": spec.restarts,
        "step_size": spec.step_size(eps), "early_stop": _early_stop(sweep, spec, target),
        "iterations": t, "output": mode, "images": len(flags[0]),
        "attacked_output": target != "e2e" or (t, mode) == (sweep.attacked_iterations, sweep.attacked_output),
        "accuracy_mean": statistics.fmean(accs), "accuracy_std": statistics.pstdev(accs), "accuracies": accs,
        "seconds": seconds[(name, target, eps)] / len(sweep.seeds),
    }


def _worst_case_rows(survived: dict, sweep: Sweep) -> list[dict]:
    rows = []
    for eps in sweep.eps:
        for t in sweep.iterations:
            for mode in sweep.outputs:
                runs = [f for (a, tg, e, tt, m), f in survived.items() if e == eps and tt == t and m == mode]
                per_seed = [torch.stack([r[s] for r in runs]).all(0) for s in range(len(sweep.seeds))]
                accs = [f.double().mean().item() for f in per_seed]
                rows.append({
                    "attack": "worst-case", "target": "all", "eps": eps, "steps": None, "restarts": None,
                    "step_size": None, "iterations": t, "output": mode, "images": len(per_seed[0]),
                    "attacked_output": None,
                    "accuracy_mean": statistics.fmean(accs), "accuracy_std": statistics.pstdev(accs),
                    "accuracies": accs, "seconds": None,
                })
    return rows


def sanity_checks(result: dict, model: CNNF, images: ImageSet, sweep: Sweep, cnn: CNNF | None) -> list[dict]:
    """The checks every evaluation prints and stores: each {"check", "passed", "detail"}."""
    rows = [r for r in result["rows"] if r["attack"] != "worst-case"]
    checks = []
    for r in (r for r in rows if r["eps"] == 0):
        clean = result["clean"][f"{r['iterations']}/{r['output']}"]
        checks.append(_check("accuracy at eps 0 equals clean accuracy", abs(r["accuracy_mean"] - clean) < 1e-12,
                             f"{r['attack']}/{r['target']} N={r['iterations']} {r['output']}: {r['accuracy_mean']:.4f} vs {clean:.4f}"))
    by_curve: dict[tuple, list[dict]] = {}
    for r in rows:
        by_curve.setdefault((r["attack"], r["target"], r["iterations"], r["output"]), []).append(r)
    for curve, points in by_curve.items():
        accs = [100 * p["accuracy_mean"] for p in sorted(points, key=lambda p: p["eps"])]
        rises = [b - a for a, b in zip(accs, accs[1:]) if b - a > NOISE_POINTS]
        checks.append(_check("accuracy does not rise with eps", not rises, f"{'/'.join(map(str, curve))}: {[round(a, 2) for a in accs]}"))
    checks += _strength_order(rows)
    checks += _gradient_checks(model, images, sweep, cnn)
    return checks


def _strength_order(rows: list[dict]) -> list[dict]:
    """PGD-40 no weaker than PGD-7, PGD-7 no weaker than FGSM (same target, eps, N, output), and
    e2e not much weaker than first-pass transfer. e2e rows scored at another N or output than
    the attacked one are transfers and are not compared."""
    index = {
        (r["attack"], r["target"], r["eps"], r["iterations"], r["output"]): r["accuracy_mean"]
        for r in rows
        if r["attacked_output"]
    }
    checks = []
    for weak, strong in (("fgsm", "pgd7"), ("pgd7", "pgd40"), ("fgsm", "pgd40")):
        for (a, target, eps, t, mode), acc in index.items():
            if a == strong and (weak, target, eps, t, mode) in index and eps > 0:
                weaker = index[(weak, target, eps, t, mode)]
                checks.append(_check(f"{strong} no weaker than {weak}", 100 * (acc - weaker) <= NOISE_POINTS,
                                     f"{target} eps={eps} N={t} {mode}: {100 * acc:.2f}% vs {100 * weaker:.2f}%"))
    for (a, target, eps, t, mode), acc in index.items():
        first = index.get((a, "first", eps, t, mode))
        if target == "e2e" and first is not None and 100 * (acc - first) > 10:
            checks.append(_check("end-to-end attack not much weaker than transfer (gradient masking?)", False,
                                 f"{a} eps={eps} N={t} {mode}: e2e {100 * acc:.2f}% vs first-pass {100 * first:.2f}%",
                                 warning=True))
    return checks


def _gradient_checks(model: CNNF, images: ImageSet, sweep: Sweep, cnn: CNNF | None) -> list[dict]:
    x, y = next(images.batches(min(len(images), 32)))
    checks = []
    for target in sweep.targets:
        x_ = x.clone().requires_grad_(True)
        loss = F.cross_entropy(gradient_source(model, target, cnn=cnn)(x_), y)
        (grad,) = torch.autograd.grad(loss, x_)
        norm = grad.abs().sum().item()
        checks.append(_check(f"{target} gradients are non-zero", norm > 0, f"sum |dL/dx| = {norm:.3e} on {len(x)} images"))
    return checks


def _check(name: str, passed: bool, detail: str, warning: bool = False) -> dict:
    return {"check": name, "passed": bool(passed), "warning": warning, "detail": detail}


def _meta(model: CNNF, images: ImageSet, sweep: Sweep) -> dict:
    return {
        "model_settings": model.settings(), "images": len(images), "seeds": sweep.seeds,
        "eps_units": "[0, 1] image units; the L-inf radius in the model's [-1, 1] range is 2 * eps",
        "attacks": [{"name": s.name, "steps": s.steps, "restarts": s.restarts, "gradient_free": s.gradient_free} for s in sweep.attacks],
        "targets": sweep.targets, "git_revision": git_revision(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "threads": torch.get_num_threads(),
    }


def format_table(result: dict) -> str:
    """The results and sanity checks as plain text, one row per (attack, target, eps, N, output)."""
    lines = [f"{'attack':<11}{'target':<7}{'eps':>6}{'N':>4} {'output':<8}{'accuracy':>18}{'images':>8}{'seconds':>9}"]
    for r in result["rows"]:
        acc = f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}%"
        secs = "" if r["seconds"] is None else f"{r['seconds']:.1f}"
        lines.append(f"{r['attack']:<11}{r['target']:<7}{r['eps']:>6.3f}{r['iterations']:>4} {r['output']:<8}{acc:>18}{r['images']:>8}{secs:>9}")
    lines.append("sanity checks:")
    for name in dict.fromkeys(c["check"] for c in result["sanity"]):
        group = [c for c in result["sanity"] if c["check"] == name]
        failed = [c for c in group if not c["passed"]]
        status = "ok  " if not failed else ("WARN" if failed[0]["warning"] else "FAIL")
        lines.append(f"  [{status}] {name}: {len(group) - len(failed)}/{len(group)} passed")
        lines += [f"         {c['detail']}" for c in failed]
    return "\n".join(lines)
