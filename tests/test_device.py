"""Devices: settings resolve to torch devices with one-line errors; training and testing run
on the configured device. Tests marked `cuda` run only where torch sees a CUDA GPU."""

from pathlib import Path

import pytest
import torch
import yaml

import cnnf
from cnnf.cli import main
from cnnf.config import ConfigError, TrainConfig
from cnnf.device import resolve_device
from synthetic import make_fashion_dir

HAS_CUDA = torch.cuda.is_available()


def test_device_settings_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if HAS_CUDA else "cpu")
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        resolve_device("gpu")
    with pytest.raises(ConfigError, match="device must be"):
        TrainConfig.from_dict({"device": "cuda1"})


@pytest.mark.skipif(HAS_CUDA, reason="checks the error where no CUDA GPU is visible")
def test_a_missing_gpu_is_one_line(capsys):
    with pytest.raises(ValueError, match="sees no CUDA GPU; use --device cpu or auto"):
        resolve_device("cuda:1")
    assert main(["test", "--pretrained", "cnnf5_fmnist", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no CUDA GPU" in err
    assert main(["test", "--pretrained", "cnnf5_fmnist", "--device", "tpu"]) == 2
    assert "argument --device: device must be" in capsys.readouterr().err


def _tiny_run(tmp_path: Path, device: str) -> Path:
    data_dir = tmp_path / "data"
    make_fashion_dir(data_dir, n_train=120, n_test=20)
    config = {"model": "paper_mnist", "iterations": 1, "epochs": 1, "batch_size": 32, "val_size": 40,
              "eval_batch_size": 40, "threads": 1, "data_dir": str(data_dir), "device": device}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 0
    return tmp_path / "run"


def test_training_and_testing_on_the_cpu(tmp_path: Path, capsys):
    run = _tiny_run(tmp_path, "cpu")
    assert main(["test", str(run), "--device", "cpu"]) == 0
    assert "clean test accuracy" in capsys.readouterr().out


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_training_on_cuda_and_the_backends_agree_there(tmp_path: Path):
    run = _tiny_run(tmp_path, "cuda")
    model = cnnf.load_model(run / "model.pt").cuda()  # checkpoints load on the CPU, then move
    x = torch.rand(4, 1, 28, 28, device="cuda") * 2 - 1
    with cnnf.use_backend("fast"):
        fast = torch.stack(model.infer(x).logits)
    with cnnf.use_backend("reference"):
        reference = torch.stack(model.infer(x).logits)
    assert fast.device.type == "cuda" and torch.allclose(fast, reference, rtol=1e-4, atol=1e-5)
