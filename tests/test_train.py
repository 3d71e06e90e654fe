"""Training runs: exact resume after kill -9, run folders, and one-line errors for bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import cnnf
from cnnf import checkpoint
from cnnf.cli import main
from synthetic import make_fashion_dir


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    """A run of a few seconds on synthetic Fashion-MNIST files: 300 train, 100 validation images."""
    data_dir = tmp_path / "data"
    make_fashion_dir(data_dir, n_train=400, n_test=50)
    config = {
        "model": "paper_mnist", "iterations": 1, "epochs": 3, "batch_size": 32, "val_size": 100,
        "checkpoint_every": 2, "eval_batch_size": 100, "threads": 1, "data_dir": str(data_dir),
        "lr_schedule": "cosine",  # exact resume includes the learning rate of every step
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnf.cli", *args], capture_output=True, text=True, timeout=300)


def _weights(run_dir: Path) -> dict:
    return checkpoint.read(run_dir / "model.pt")["model"]


def test_resume_after_kill_ends_with_the_same_weights(tiny_config: Path, tmp_path: Path):
    assert main(["train", "--config", str(tiny_config), "--out", str(tmp_path / "straight")]) == 0
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "cnnf.cli", "train", "--config", str(tiny_config), "--out", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "model.pt").exists()
    assert main(["train", "--resume", str(killed)]) == 0
    straight, resumed = _weights(tmp_path / "straight"), _weights(killed)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    epochs = [json.loads(line)["epoch"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_run_folder_contents(tiny_config: Path, tmp_path: Path):
    run = tmp_path / "run"
    assert main(["train", "--config", str(tiny_config), "--out", str(run), "--set", "epochs=1"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["epochs"] == 1
    record = json.loads((run / "metrics.jsonl").read_text())
    for key in ("loss_total", "loss_ce", "loss_rec", "loss_cll", "loss_norm", "train_acc", "val_acc", "images_per_s"):
        assert key in record
    assert len(record["val_acc_last"]) == 2  # iterations 0 and 1
    state = checkpoint.read(run / "checkpoint.pt")
    assert {"optimizer", "rng", "position", "config"} <= state.keys()
    assert not list(run.glob("*.tmp"))


def test_init_from_starts_from_the_given_weights(tiny_config: Path, tmp_path: Path):
    """Fine-tuning: with a vanishing learning rate the run ends where its init_from source began."""
    torch.manual_seed(123)
    source = cnnf.create_model("paper_mnist", iterations=0)
    (tmp_path / "source").mkdir()
    checkpoint.save_atomic(checkpoint.model_state(source), tmp_path / "source" / "model.pt")
    torch.manual_seed(0)
    fresh = cnnf.create_model("paper_mnist", iterations=1).state_dict()
    run = tmp_path / "run"
    assert main(["train", "--config", str(tiny_config), "--out", str(run), "--set", "epochs=1",
                 "--set", "lr=1e-12", "--set", f"init_from={tmp_path / 'source'}"]) == 0
    tuned = _weights(run)
    assert max((fresh[k] - source.state_dict()[k]).abs().max() for k in fresh) > 1e-2
    assert all(torch.allclose(tuned[k], source.state_dict()[k], atol=1e-8) for k in tuned)


@pytest.mark.parametrize("kind, needle", [("conv4", "another architecture"), ("missing", "neither a run folder")])
def test_bad_init_from_is_refused_before_the_run_starts(tiny_config: Path, tmp_path: Path, capsys, kind, needle):
    source = tmp_path / "conv4.pt"
    if kind == "conv4":
        checkpoint.save_atomic(checkpoint.model_state(cnnf.create_model("conv4_mnist")), source)
    _one_line_error(capsys, ["train", "--config", str(tiny_config), "--out", str(tmp_path / "r"),
                             "--set", f"init_from={source}"], needle)
    assert not (tmp_path / "r").exists()


def _one_line_error(capsys, args: list[str], needle: str) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnnf: error:") and "\n" not in err and needle in err
    return err


def test_existing_run_folder_is_refused_and_untouched(tiny_config: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("keep me")
    _one_line_error(capsys, ["train", "--config", str(tiny_config), "--out", str(run)], "--overwrite")
    assert (run / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "override, needle",
    [("epochs=ten", "epochs must be int"), ("learning_rate=0.1", "config: unknown key(s) learning_rate"), ("epochs=0", "epochs must be >= 1"),
     ("output=mean", "output must be one of last, average")],
)
def test_bad_config_values(tiny_config: Path, tmp_path: Path, capsys, override: str, needle: str):
    _one_line_error(capsys, ["train", "--config", str(tiny_config), "--out", str(tmp_path / "r"), "--set", override], needle)
    assert not (tmp_path / "r").exists()


def test_data_dir_without_files(tiny_config: Path, tmp_path: Path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _one_line_error(capsys, ["train", "--config", str(tiny_config), "--out", str(tmp_path / "r"),
                                   "--set", f"data_dir={empty}"], "train-images-idx3-ubyte")
    assert "apt-get install" in err


def test_truncated_checkpoint(tmp_path: Path, capsys):
    path = tmp_path / "model.pt"
    checkpoint.save_atomic(checkpoint.model_state(cnnf.create_model("paper_mnist")), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _one_line_error(capsys, ["test", str(path)], "corrupt or truncated")


def test_checkpoint_of_another_architecture(tmp_path: Path):
    path = tmp_path / "conv4.pt"
    checkpoint.save_atomic(checkpoint.model_state(cnnf.create_model("conv4_mnist")), path)
    with pytest.raises(checkpoint.CheckpointError, match="another architecture"):
        checkpoint.load_into(cnnf.create_model("paper_mnist"), checkpoint.read(path), path)


def test_resume_without_a_run(tmp_path: Path, capsys):
    _one_line_error(capsys, ["train", "--resume", str(tmp_path / "nothing")], "no config.yaml")


def test_errors_print_no_traceback(tmp_path: Path):
    result = _cli("test", "--pretrained", "no_such_model")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "no pretrained model" in result.stderr


def test_list_models():
    result = _cli("list-models")
    assert result.returncode == 0 and "paper_mnist" in result.stdout and "conv4_mnist" in result.stdout
    line = next(line for line in result.stdout.splitlines() if "adv_pgd40_cnnf5_fmnist" in line)
    assert "from cnnf5_fmnist, adversarial pgd40 eps 0.3" in line


def test_tensorboard_logging_or_a_clear_error(tiny_config: Path, tmp_path: Path, capsys):
    args = ["train", "--config", str(tiny_config), "--out", str(tmp_path / "tb"), "--set", "epochs=1", "--set", "tensorboard=true"]
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        _one_line_error(capsys, args, "pip install tensorboard")
        assert not (tmp_path / "tb").exists()
    else:
        assert main(args) == 0 and list((tmp_path / "tb" / "tensorboard").glob("events.*"))


def test_cosine_schedule_decays_from_lr_to_zero_per_step():
    from cnnf.config import ConfigError, TrainConfig, learning_rate

    cosine = TrainConfig(lr=1e-3, epochs=2, lr_schedule="cosine")
    assert learning_rate(cosine, 0, steps_per_epoch=10) == 1e-3
    assert learning_rate(cosine, 10, steps_per_epoch=10) == pytest.approx(5e-4)
    assert learning_rate(cosine, 15, steps_per_epoch=10) == pytest.approx(1e-3 * (1 + math.cos(0.75 * math.pi)) / 2)
    assert learning_rate(TrainConfig(lr=1e-3), 15, steps_per_epoch=10) == 1e-3
    with pytest.raises(ConfigError, match="lr_schedule must be one of constant, cosine"):
        TrainConfig.from_dict({"lr_schedule": "step"})
    with pytest.raises(ConfigError, match="relu_mixing must be in"):
        TrainConfig.from_dict({"relu_mixing": 1.5})


def test_training_steps_use_the_scheduled_learning_rate(tiny_config: Path, tmp_path: Path):
    from cnnf.config import learning_rate, load_config

    assert main(["train", "--config", str(tiny_config), "--out", str(tmp_path / "run")]) == 0
    state = checkpoint.read(tmp_path / "run" / "checkpoint.pt")
    steps_per_epoch = -(-300 // 32)
    last = learning_rate(load_config(tiny_config), 3 * steps_per_epoch - 1, steps_per_epoch)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(last) and 0 < last < 1e-5
