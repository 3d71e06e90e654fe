"""Robustness sweeps: results schema, worst case, sanity checks, CLI and plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import cnnf
from cnnf import checkpoint
from cnnf.attacks import parse_attacks
from cnnf.cli import main
from cnnf.data import load_dataset
from cnnf import evaluate
from cnnf.evaluate import Sweep, _strength_order, run_sweep
from cnnf.results import Row
from cnnf.scoring import Scoring
from cnnf.sweep_progress import AttackRun, RunKey, SweepProgress, SweepProgressError
from synthetic import make_fashion_dir


@pytest.fixture
def tiny(tmp_path: Path):
    """A random CNN-F-1 and 40 synthetic test images, saved as a run folder."""
    torch.manual_seed(0)
    make_fashion_dir(tmp_path / "data", n_train=20, n_test=40)
    model = cnnf.create_model("paper_mnist", iterations=1)
    run = tmp_path / "run"
    run.mkdir()
    config = {"dataset": "fashion-mnist", "data_dir": str(tmp_path / "data")}
    checkpoint.save_atomic({**checkpoint.model_state(model), "config": config}, run / "model.pt")
    return model, load_dataset("fashion-mnist", tmp_path / "data")["test"], run


def test_sweep_rows_and_checks(tiny):
    model, images, _ = tiny
    torch.set_num_threads(1)
    sweep = Sweep(parse_attacks("fgsm,pgd7"), ["first", "e2e"], [0.0, 0.1], [0, 1], seeds=[0, 1], batch_size=20)
    result = run_sweep(model, images, sweep)
    rows = [r for r in result.rows if r.attack != "worst-case"]
    assert len(rows) == 2 * 2 * 2 * 2 * 2  # attacks x targets x eps x iterations x outputs
    for r in rows:
        assert r.images == 40 and len(r.accuracies) == 2 and r.steps in (1, 7)
        if r.eps == 0:
            assert r.accuracy_mean == result.clean[f"{r.iterations}/{r.output}"]
    worst = {(r.eps, r.iterations, r.output): r.accuracy_mean for r in result.rows if r.attack == "worst-case"}
    for r in rows:
        assert worst[(r.eps, r.iterations, r.output)] <= r.accuracy_mean + 1e-12
    assert all(r.early_stop == (r.target == "e2e" and r.attack == "pgd7") for r in rows)
    e2e_attacked = [r for r in rows if r.target == "e2e" and r.attacked_output]
    assert {(r.iterations, r.output) for r in e2e_attacked} == {(1, "last")}
    names = {c.check for c in result.sanity}
    assert {"accuracy at eps 0 equals clean accuracy", "accuracy does not rise with eps", "e2e gradients are non-zero"} <= names


def _interrupt_third_call(monkeypatch, name, record):
    """Wrap evaluate.<name>: calls where record(args) is not None are logged, and the third one
    raises KeyboardInterrupt. Returns the log (clear it before resuming)."""
    log = []
    real = getattr(evaluate, name)

    def wrapper(*args):
        value = record(args)
        if value is not None:
            log.append(value)
            if len(log) == 3:
                raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(evaluate, name, wrapper)
    return log


def _interrupt_and_resume(tiny, sweep, progress, log, report=None):
    """Interrupt `sweep`, resume it from `progress`; returns the resumed results."""
    model, images, _ = tiny
    with pytest.raises(KeyboardInterrupt):
        run_sweep(model, images, sweep(), progress=progress)
    assert progress.exists()
    log.clear()
    resumed = run_sweep(model, images, sweep(), progress=progress, report=report)
    assert not progress.exists()
    return resumed


def test_interrupted_sweep_resumes_where_it_stopped(tiny, tmp_path: Path, monkeypatch):
    torch.set_num_threads(1)
    sweep = lambda: Sweep(parse_attacks("fgsm"), ["first", "e2e"], [0.05, 0.1], [0, 1], batch_size=20)  # noqa: E731
    reference = run_sweep(tiny[0], tiny[1], sweep())
    log = _interrupt_third_call(monkeypatch, "_attack_run", lambda args: args[3].key)
    lines = []
    resumed = _interrupt_and_resume(tiny, sweep, tmp_path / "sweep.progress.pt", log, report=lines.append)
    assert len(log) == 2 and resumed.meta["resumed_runs"] == 2  # 4 runs: 2 saved, 2 left
    assert lines[0] == f"resuming the sweep saved in {tmp_path / 'sweep.progress.pt'}"
    runs = lines[1:]
    assert len(runs) == 4 and sum("(saved earlier)" in line for line in runs) == 2
    assert runs[0].startswith("fgsm first eps=0.05 seed=0: ") and "at N=1 last" in runs[0]
    assert [r.accuracies for r in resumed.rows] == [r.accuracies for r in reference.rows]


def test_interrupted_run_resumes_at_its_batch(tiny, tmp_path: Path, monkeypatch):
    """A long run (one attack at one eps) keeps its finished batches too."""
    torch.set_num_threads(1)
    sweep = lambda: Sweep(parse_attacks("pgd7"), ["e2e"], [0.1], [0, 1], batch_size=10)  # noqa: E731
    reference = run_sweep(tiny[0], tiny[1], sweep())
    log = _interrupt_third_call(monkeypatch, "_batch_flags", lambda args: None if args[4] is None else args[5])
    resumed = _interrupt_and_resume(tiny, sweep, tmp_path / "sweep.progress.pt", log)
    assert log == [2, 3]  # 40 images in batches of 10: batches 0 and 1 were saved
    assert [r.accuracies for r in resumed.rows] == [r.accuracies for r in reference.rows]


def test_sweep_run_in_pieces_merges_into_the_whole(tiny, tmp_path: Path, monkeypatch):
    """A piece of a sweep (other eps, run in another process) keeps its progress file; the
    whole sweep takes the piece's runs from it instead of attacking again."""
    torch.set_num_threads(1)
    model, images, _ = tiny
    sweep = lambda eps: Sweep(parse_attacks("fgsm"), ["first", "e2e"], eps, [0, 1], batch_size=20)  # noqa: E731
    reference = run_sweep(model, images, sweep([0.05, 0.1]))
    piece = tmp_path / "piece.progress.pt"
    run_sweep(model, images, sweep([0.1]), progress=piece, keep_progress=True)
    assert piece.exists()
    log = _interrupt_third_call(monkeypatch, "_attack_run", lambda args: args[3].key)
    whole = run_sweep(model, images, sweep([0.05, 0.1]), progress=tmp_path / "whole.progress.pt", pieces=(piece,))
    assert sorted(log) == [RunKey(0, "fgsm", "e2e", 0.05), RunKey(0, "fgsm", "first", 0.05)]  # 0.1 came from the piece
    assert whole.meta["resumed_runs"] == 2
    assert [r.accuracies for r in whole.rows] == [r.accuracies for r in reference.rows]
    other = Sweep(parse_attacks("fgsm"), ["first"], [0.1], [0, 1], batch_size=10)  # another batch size
    with pytest.raises(SweepProgressError, match="different sweep"):
        run_sweep(model, images, other, pieces=(piece,))


def test_progress_of_another_sweep_is_refused(tiny, tmp_path: Path):
    model, images, _ = tiny
    progress = tmp_path / "sweep.progress.pt"
    run = AttackRun({Scoring(0, "last"): torch.ones(3, dtype=torch.bool)}, 1.0)
    SweepProgress(progress, "other sweep").put(RunKey(0, "fgsm", "first", 0.1), run)
    with pytest.raises(SweepProgressError, match="different sweep"):
        run_sweep(model, images, Sweep(parse_attacks("fgsm"), ["first"], [0.1], [0]), progress=progress)
    progress.write_bytes(b"not a torch file")
    with pytest.raises(SweepProgressError, match="corrupt"):
        SweepProgress(progress, "x")


def _row(attack="fgsm", target="first", t=0, acc=0.5, attacked=True, eps=0.1, std=0.0):
    return Row(attack=attack, target=target, eps=eps, steps=1, restarts=1, step_size=0.02, iterations=t,
               output="last", images=10, attacked_output=attacked, accuracy_mean=acc, accuracy_std=std,
               accuracies=[acc], seconds=1.0)


def test_strength_checks_skip_e2e_transfer_rows():
    """e2e images made against N = 5 and scored at N = 0 are a transfer: no ordering expected."""
    transfer = [_row("fgsm", "e2e", 0, 0.5, attacked=False), _row("pgd40", "e2e", 0, 0.8, attacked=False),
                _row("pgd40", "first", 0, 0.1)]
    assert _strength_order(transfer) == []
    attacked = [_row("fgsm", "e2e", 5, 0.5), _row("pgd40", "e2e", 5, 0.8), _row("pgd40", "first", 5, 0.1)]
    failed = {c.check for c in _strength_order(attacked) if not c.passed}
    assert failed == {"pgd40 no weaker than fgsm", "end-to-end attack not much weaker than transfer (gradient masking?)"}


def test_evaluate_command_writes_results_and_plot(tiny, tmp_path: Path, capsys):
    _, _, run = tiny
    out = tmp_path / "results" / "tiny.json"
    args = ["evaluate", str(run), "--attacks", "fgsm", "--targets", "first", "--eps", "0,0.1", "--out", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert {"meta", "clean", "rows", "sanity"} <= result.keys()
    assert result["meta"]["git_revision"] and out.with_suffix(".png").stat().st_size > 0
    assert "sanity checks" in capsys.readouterr().out
    piece = tmp_path / "piece.json"  # a piece run with --keep-progress, merged by the whole sweep
    assert main([*args[:7], "0.1", "--out", str(piece), "--keep-progress"]) == 0
    assert piece.with_suffix(".progress.pt").exists()
    assert main([*args, "--merge", str(piece.with_suffix(".progress.pt"))]) == 0
    assert json.loads(out.read_text())["meta"]["resumed_runs"] == 1


@pytest.mark.parametrize("flag, value, needle", [("--attacks", "pgd,cw", "unknown"), ("--targets", "last", "unknown target"),
                                                  ("--eps", "0,a", "--eps"), ("--merge", "nowhere.progress.pt", "argument --merge: no file nowhere.progress.pt")])
def test_evaluate_bad_arguments(tiny, capsys, flag, value, needle):
    _, _, run = tiny
    assert main(["evaluate", str(run), flag, value]) == 2
    assert needle in capsys.readouterr().err


def test_plot_marks_e2e_transfer_rows():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cnnf.plot import _draw_curve

    _, ax = plt.subplots()
    rows = [_row(eps=e, attacked=False) for e in (0.0, 0.1)]
    _draw_curve(ax, rows, "model, N=0", "C0")
    _draw_curve(ax, [_row(eps=e) for e in (0.0, 0.1)], "model, N=5", "C1")
    handles, labels = ax.get_legend_handles_labels()
    assert labels == ["model, N=0 (transfer)", "model, N=5"]
    assert [h.lines[0].get_linestyle() for h in handles] == ["--", "-"]
    plt.close("all")


@pytest.mark.parametrize("change, needle", [
    ({"attacks": []}, "at least one value in attacks"), ({"targets": ["last"]}, "unknown target(s) last"),
    ({"eps": [0.1, 2.0]}, "eps must be in [0, 1]"), ({"iterations": [-1]}, "iterations must be an integer >= 0"),
    ({"outputs": ("mean",)}, "output must be one of last, average"), ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"seeds": []}, "at least one value in seeds")])
def test_bad_sweeps_are_refused(change, needle):
    settings = {"attacks": parse_attacks("fgsm"), "targets": ["first"], "eps": [0.1], "iterations": [0], **change}
    with pytest.raises(ValueError) as error:
        Sweep(**settings)
    assert needle in str(error.value)


def test_a_sweep_on_no_images_is_refused(tiny):
    model, images, _ = tiny
    with pytest.raises(ValueError, match=r"empty image set \(0 images\)"):
        run_sweep(model, images.subset(torch.arange(0)), Sweep(parse_attacks("fgsm"), ["first"], [0.1], [0]))
