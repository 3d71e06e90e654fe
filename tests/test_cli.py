"""Bad input on the command line: every malformed argument or file ends in one line
`cnnf: error: ...` naming it, exit code 2, no traceback, before any other state is read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cnnf
from cnnf import checkpoint
from cnnf.cli import main
from cnnf.scoring import Scoring
from cnnf.sweep_progress import AttackRun, RunKey, SweepProgress
from synthetic import make_fashion_dir


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run folder with a random CNN-F-1 trained on 4 synthetic test images' data set."""
    make_fashion_dir(tmp_path / "data", n_train=4, n_test=4)
    folder = tmp_path / "run"
    folder.mkdir()
    config = {"dataset": "fashion-mnist", "data_dir": str(tmp_path / "data")}
    model = cnnf.create_model("paper_mnist", iterations=1)
    checkpoint.save_atomic({**checkpoint.model_state(model), "config": config}, folder / "model.pt")
    return folder


def _error(capsys, args: list[str]) -> str:
    """The one error line of `cnnf ARGS`, which must exit with code 2."""
    assert main(args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("cnnf: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("flag, value, needle", [
    ("--subset", "-5", "argument --subset: expected an integer >= 1, got '-5'"),
    ("--subset", "0", "argument --subset: expected an integer >= 1"),
    ("--subset", "all", "argument --subset: expected an integer >= 1, got 'all'"),
    ("--batch-size", "0", "argument --batch-size: expected an integer >= 1"),
    ("--seeds", "0", "argument --seeds: expected an integer >= 1"),
    ("--iterations", "0,-1", "argument --iterations: expected an integer >= 0, got '-1'"),
    ("--iterations", "1.5", "argument --iterations: expected an integer >= 0"),
    ("--iterations", ",", "argument --iterations: expected a comma list, e.g. 0,1,5"),
    ("--eps", "0,1.5", "argument --eps: eps must be in [0, 1]"),
    ("--eps", "0.1,nan", "argument --eps: eps must be a finite number"),
    ("--eps", "0,a", "argument --eps: expected numbers in [0, 1]"),
    ("--attacks", "fgsm,cw", "argument --attacks: unknown attack 'cw'"),
    ("--targets", "first,last", "argument --targets: unknown target 'last'; choose from first, cnn, e2e"),
    ("--targets", "cnn", "--targets cnn transfers from a separately trained CNN"),
    ("--cnn", "no_such_cnn", "argument --cnn: no_such_cnn is neither a run folder"),
    ("--dataset", "cifar", "argument --dataset: invalid choice: 'cifar'"),
    ("--data-dir", "no_such_folder", "argument --data-dir: no folder no_such_folder"),
    ("--merge", "no.progress.pt", "argument --merge: no file no.progress.pt"),
])
def test_evaluate_refuses_bad_arguments(run: Path, capsys, flag, value, needle):
    assert needle in _error(capsys, ["evaluate", str(run), f"{flag}={value}"])


@pytest.mark.parametrize("args, needle", [
    (["evaluate", "no_such_run"], "argument run_dir: no_such_run is neither a run folder"),
    (["evaluate", "--pretrained", "no_such_model"], "argument --pretrained: no pretrained model 'no_such_model'"),
    (["evaluate"], "one of the arguments run_dir --pretrained is required"),
    (["test", "RUN", "--iterations", "-1"], "argument --iterations: expected an integer >= 0, got '-1'"),
    (["test", "RUN", "--bogus"], "unrecognized arguments: --bogus"),
    ([], "the following arguments are required: COMMAND"),
    (["export", "RUN", "--name", "../evil", "--command", "cnnf train"], "argument --name: expected a name of letters"),
    (["export", "RUN", "--name", "x", "--command", " "], "argument --command: expected a non-empty text"),
    (["export", "no_such_run", "--name", "x", "--command", "c"], "argument run_dir: no folder no_such_run"),
])
def test_other_commands_refuse_bad_arguments(run: Path, capsys, args, needle):
    assert needle in _error(capsys, [str(run) if a == "RUN" else a for a in args])


def test_user_dataset_without_its_files(run: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """Another dataset than the run's does not inherit the run's data dir; the error names the layout."""
    monkeypatch.delenv("CNNF_DATA_DIR", raising=False)
    err = _error(capsys, ["test", str(run), "--dataset", "cifar10"])
    assert "cifar10: no data folder given (expected DIR/cifar-10-batches-bin/data_batch_1.bin" in err
    assert "--data-dir DIR, or set CNNF_DATA_DIR" in err
    err = _error(capsys, ["evaluate", str(run), "--dataset", "imagefolder", "--data-dir", str(tmp_path)])
    assert f"{tmp_path / 'train'}: missing; expected DIR/train/<class>/<image>" in err


def test_an_evaluate_out_that_is_a_folder_is_refused(run: Path, capsys):
    assert "argument --out: " in _error(capsys, ["evaluate", str(run), "--out", str(run)])


def _stale_progress(out: Path) -> bytes:
    """A progress file of another sweep beside `out`; returns its bytes."""
    run = AttackRun({Scoring(0, "last"): torch.ones(4, dtype=torch.bool)}, 1.0)
    out.parent.mkdir(parents=True, exist_ok=True)
    SweepProgress(out.with_suffix(".progress.pt"), "another sweep").put(RunKey(0, "fgsm", "first", 0.1), run)
    return out.with_suffix(".progress.pt").read_bytes()


@pytest.mark.parametrize("flag, value", [("--batch-size", "0"), ("--iterations", "-1"), ("--subset", "-5")])
def test_a_stale_progress_file_does_not_mask_a_bad_argument(run: Path, tmp_path: Path, capsys, flag, value):
    out = tmp_path / "results" / "tiny.json"
    saved = _stale_progress(out)
    err = _error(capsys, ["evaluate", str(run), "--attacks", "fgsm", "--targets", "first", "--eps", "0.1",
                          "--out", str(out), flag, value])
    assert f"argument {flag}" in err and "progress" not in err
    assert out.with_suffix(".progress.pt").read_bytes() == saved and not out.exists()


def test_a_stale_progress_file_of_another_sweep_is_named(run: Path, tmp_path: Path, capsys):
    out = tmp_path / "results" / "tiny.json"
    _stale_progress(out)
    err = _error(capsys, ["evaluate", str(run), "--attacks", "fgsm", "--targets", "first", "--eps", "0.1",
                          "--out", str(out)])
    assert f"{out.with_suffix('.progress.pt')} holds the progress of a different sweep" in err


@pytest.mark.parametrize("content, needle", [
    ("{", "is not valid JSON (Expecting property name enclosed in double quotes at line 1, column 2)"),
    ("[]", "expected a mapping of key: value, got list"),
    ('{"meta": {}, "clean": {}, "rows": [{"attack": "fgsm"}], "sanity": []}', "rows[0]: missing key(s) target"),
    ('{"meta": {}, "clean": {}, "rows": [], "sanity": []}', "no rows to plot"),
])
def test_plot_names_a_bad_results_file(tmp_path: Path, capsys, content, needle):
    results = tmp_path / "bad.json"
    results.write_text(content)
    err = _error(capsys, ["plot", str(results), "--out", str(tmp_path / "fig.png")])
    assert str(results) in err and needle in err
    assert not (tmp_path / "fig.png").exists()


@pytest.mark.parametrize("args, needle", [
    (["MISSING", "--out", "fig.png"], "argument results: no file"),
    (["RESULTS", "--out", "fig.xyz"], "argument --out: expected an image file ending in one of"),
    (["RESULTS", "--out", "fig.png", "--output", "mean"], "argument --output: invalid choice: 'mean'"),
])
def test_plot_refuses_bad_arguments(tmp_path: Path, capsys, args, needle):
    (tmp_path / "r.json").write_text("{}")
    paths = {"MISSING": str(tmp_path / "missing.json"), "RESULTS": str(tmp_path / "r.json")}
    assert needle in _error(capsys, [paths.get(a, a) for a in ["plot", *args]])


def test_export_names_a_malformed_metrics_file(run: Path, capsys):
    (run / "metrics.jsonl").write_text('{"epoch": 1, "val_acc": 0.5}\n{"epoch": 2,\n')
    err = _error(capsys, ["export", str(run), "--name", "x", "--command", "cnnf train --config c.yaml"])
    assert f"metrics file {run / 'metrics.jsonl'} is not valid JSON" in err and "line 2" in err


def test_the_issue_example_prints_no_traceback(run: Path):
    done = subprocess.run([sys.executable, "-m", "cnnf.cli", "evaluate", str(run), "--subset", "-5"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == ("cnnf: error: argument --subset: expected an integer >= 1, got '-5' "
                                   "(see cnnf evaluate --help)")
