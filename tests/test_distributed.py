"""Several processes (gloo on the CPU): a 2-process training run resumes, also with 1 process,
to the weights of a 1-process run; a 2-process evaluation gathers the results of 1 process.

The processes are forked from the test (torchrun's environment set by hand, no interpreter
start-up); the slow test runs the real `torchrun --nproc-per-node 2 -m cnnf train`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml

import cnnf
from cnnf import checkpoint, distributed, train
from cnnf.cli import main
from cnnf.config import ConfigError
from cnnf.data import ImageSet
from cnnf.losses import LossWeights
from cnnf.steps import make_step
from synthetic import make_fashion_dir



@pytest.fixture(scope="module", autouse=True)
def warm_process(one_thread):
    """One thread, and torch's one-off set-up of a first training step (about 2 s) done here,
    where the forked processes inherit both, instead of in each of them."""
    model, x, y = _model_and_batch()
    make_step(model, torch.optim.SGD(model.parameters(), lr=1.0), LossWeights(), None)(x, y)


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    """2 epochs of 2 batches (24 training images: 16, 8; 8 validation images) of a CNN-F-1."""
    make_fashion_dir(tmp_path / "data", n_train=32, n_test=20)
    config = {"model": "paper_mnist", "iterations": 1, "epochs": 2, "batch_size": 16, "val_size": 8,
              "checkpoint_every": 1, "eval_batch_size": 16, "threads": 1, "data_dir": str(tmp_path / "data"),
              "device": "cpu", "lr_schedule": "cosine"}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_group(rank: int, port: int, function, args: tuple) -> None:
    """function(rank, *args) in process `rank` of 2, with the environment torchrun gives it."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    function(rank, *args)


def _two_processes(function, *args) -> None:
    """Run function(rank, *args) in 2 processes forked from this one; raises if one fails."""
    mp.start_processes(_in_group, args=(_free_port(), function, args), nprocs=2, start_method="fork")


def _command(rank: int, argv: list[str], interrupt_at: tuple[int, int] | None = None) -> None:
    """`cnnf argv`; with `interrupt_at` (epoch, step), interrupted right after the checkpoint of
    that position is written (as a kill would leave it)."""
    if interrupt_at is not None:
        save = train._save_training_state

        def save_then_stop(run_dir, config, model, optimizer, position):
            save(run_dir, config, model, optimizer, position)
            if (position.epoch, position.step) == interrupt_at:
                raise KeyboardInterrupt

        train._save_training_state = save_then_stop
    code = main(argv)
    if code != (130 if interrupt_at else 0):
        raise RuntimeError(f"rank {rank}: cnnf {' '.join(argv)} exited with {code}")


def _model_and_batch() -> tuple[cnnf.CNNF, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return cnnf.create_model("paper_mnist", iterations=1), torch.rand(5, 1, 28, 28) * 2 - 1, torch.randint(0, 10, (5,))


def _step_on_a_share(rank: int, out: Path) -> None:
    """One SGD step (lr 1: the update is the gradient) on images rank, rank + 2, ... of the batch."""
    distributed.start("cpu")
    model, x, y = _model_and_batch()
    step = make_step(model, torch.optim.SGD(model.parameters(), lr=1.0), LossWeights(), None)
    step(x[rank::2], y[rank::2], len(y[rank::2]) / len(y))
    if rank == 0:
        torch.save(model.state_dict(), out)
    distributed.stop()


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return checkpoint.read(run_dir / "model.pt")["model"]


def _epochs(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_shares_of_a_batch_are_the_batch():
    images = ImageSet(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1), torch.arange(10))
    whole = list(images.batches(4, shuffle=True, generator=torch.Generator().manual_seed(1)))
    parts = [list(images.batches(4, shuffle=True, generator=torch.Generator().manual_seed(1), part=(r, 3))) for r in range(3)]
    for step, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([p[step][1] for p in parts]).sort().values, y.sort().values)
        assert torch.equal(parts[1][step][1], y[1::3])


def test_a_step_on_two_uneven_shares_is_the_step_on_the_batch(tmp_path: Path):
    """3 and 2 of 5 images: each share's loss weighted by its images, gradients summed (the
    updates agree to 1e-4 of their largest value; weighting the shares alike is off by 19-31 %)."""
    _two_processes(_step_on_a_share, tmp_path / "two.pt")
    model, x, y = _model_and_batch()
    initial = {name: value.clone() for name, value in model.state_dict().items()}
    make_step(model, torch.optim.SGD(model.parameters(), lr=1.0), LossWeights(), None)(x, y)
    two, one = torch.load(tmp_path / "two.pt"), model.state_dict()
    for name, value in one.items():
        update = (value - initial[name]).abs().max()
        assert update > 0 and (two[name] - value).abs().max() <= 1e-4 * update


def test_two_processes_train_and_resume_with_two_or_one(tiny_config: Path, tmp_path: Path):
    """Interrupted mid-epoch 2, a 2-process run resumes with 2 processes and with 1."""
    two, one = tmp_path / "two", tmp_path / "two_then_one"
    _two_processes(_command, ["train", "--config", str(tiny_config), "--out", str(two)], (1, 1))
    saved = checkpoint.read(two / "checkpoint.pt")
    assert saved["position"]["epoch"] == 1 and saved["position"]["step"] == 1 and len(saved["rng_processes"]) == 2
    assert saved["position"]["totals"]["seen"] == 16  # both processes' images
    assert not (two / "model.pt").exists() and _epochs(two) == [1]
    shutil.copytree(two, one)
    _two_processes(_command, ["train", "--resume", str(two)])
    assert main(["train", "--resume", str(one)]) == 0
    assert _epochs(two) == _epochs(one) == [1, 2]
    weights_two, weights_one = _weights(two), _weights(one)
    assert all(torch.allclose(weights_two[k], weights_one[k], rtol=0, atol=1e-5) for k in weights_two)


def test_two_process_evaluation_gathers_the_single_process_results(tmp_path: Path):
    torch.manual_seed(0)
    make_fashion_dir(tmp_path / "data", n_train=10, n_test=20)
    run = tmp_path / "run"
    run.mkdir()
    checkpoint.save_atomic({**checkpoint.model_state(cnnf.create_model("paper_mnist", iterations=1)),
                            "config": {"dataset": "fashion-mnist", "data_dir": str(tmp_path / "data")}}, run / "model.pt")
    args = ["evaluate", str(run), "--attacks", "fgsm,pgd7", "--targets", "first,e2e", "--eps", "0,0.1",
            "--batch-size", "6", "--device", "cpu"]  # 4 batches: 6, 6, 6, 2 images
    assert main([*args, "--out", str(tmp_path / "one.json")]) == 0
    _two_processes(_command, [*args, "--out", str(tmp_path / "two.json")])
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert two["meta"].pop("processes") == 2 and one["meta"].pop("processes") == 1
    for result in (one, two):
        for key in ("date", "threads"):
            result["meta"].pop(key)
        for row in result["rows"]:
            row.pop("seconds")
    assert one == two
    assert not (tmp_path / "two.progress.pt").exists()


def test_a_gpu_name_for_several_processes_is_one_line(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="names one GPU for 2 processes; use --device cuda"):
        distributed.process_device("cuda:1")
    assert distributed.process_device("cpu") == torch.device("cpu")


def test_too_small_a_batch_for_the_processes_is_one_line():
    with pytest.raises(ConfigError, match="3 processes, but a batch of the epoch holds only 2 images"):
        train._check_shares(10, 4, 3)


@pytest.mark.slow
def test_torchrun_trains_as_an_interrupted_and_resumed_run(tiny_config: Path, tmp_path: Path):
    """The real launcher, `python -m cnnf`; its run and a 2-process run interrupted mid-epoch
    and resumed with 2 processes end with the same weights, bit for bit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node", "2", "--master-port",
               str(_free_port()), "-m", "cnnf", "train", "--config", str(tiny_config), "--out", str(tmp_path / "a")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("final model:") == 1  # printed by the main process only
    resumed = tmp_path / "b"
    _two_processes(_command, ["train", "--config", str(tiny_config), "--out", str(resumed)], (1, 1))
    _two_processes(_command, ["train", "--resume", str(resumed)])
    a, b = _weights(tmp_path / "a"), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
