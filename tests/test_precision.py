"""bf16: training steps, logits near fp32's, attacks in float32, the setting through configs,
checkpoints and resume, and one-line errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import yaml

import cnnf
from cnnf import checkpoint, precision
from cnnf.attacks import gradient_source, pgd
from cnnf.cli import main
from cnnf.losses import LossWeights
from cnnf.precision import autocast
from cnnf.steps import make_step
from cnnf.train import adam, saved_config
from synthetic import make_fashion_dir

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("model_name", ["paper_mnist", "conv4_mnist"])
def test_a_bf16_training_step_changes_the_float32_parameters(model_name: str):
    torch.manual_seed(0)
    model = cnnf.create_model(model_name, iterations=1)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    x, y = torch.rand(4, 1, 28, 28) * 2 - 1, torch.randint(0, 10, (4,))
    result = make_step(model, adam(model.parameters(), 1e-3, 5e-4), LossWeights(), None, "bf16")(x, y)
    assert all(torch.isfinite(torch.tensor(value)) for value in result.terms.values())
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32
        assert not torch.equal(p, before[name]), name


@pytest.mark.parametrize("backend", ["fast", pytest.param("reference", marks=pytest.mark.slow)])
def test_bf16_logits_are_near_the_fp32_logits(backend: str):
    """The plain pass agrees to bf16 rounding (measured 0.5 % of the largest logit); the feedback
    iterations flip a few AdaReLU / AdaPool choices, so over the 5 of them the logits differ by
    2.4-2.6 % of their spread on average and 4-5 % of the predictions change (measured; the
    bounds allow about twice that)."""
    model = cnnf.load_pretrained("cnnf5_fmnist")
    torch.manual_seed(0)
    x = torch.rand(32, 1, 28, 28) * 2 - 1
    with cnnf.use_backend(backend), torch.inference_mode():
        fp32 = torch.stack(model.infer(x).logits)
        with autocast("bf16", x.device):
            bf16 = torch.stack(model.infer(x).logits).float()
    difference = (bf16 - fp32).abs()
    assert difference[0].max() <= 0.012 * fp32[0].abs().max()
    assert difference.mean() <= 0.06 * fp32.std()
    assert (bf16.argmax(-1) == fp32.argmax(-1)).float().mean() >= 0.9
    assert not torch.equal(bf16, fp32)  # bf16 did run


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_on_cuda_trains_and_stays_near_fp32():
    model = cnnf.load_pretrained("cnnf5_fmnist").cuda()
    torch.manual_seed(0)
    x = torch.rand(32, 1, 28, 28, device="cuda") * 2 - 1
    with torch.inference_mode():
        fp32 = torch.stack(model.infer(x).logits)
        with autocast("bf16", x.device):
            bf16 = torch.stack(model.infer(x).logits).float()
    assert (bf16[0] - fp32[0]).abs().max() <= 0.012 * fp32[0].abs().max()
    assert (bf16.argmax(-1) == fp32.argmax(-1)).float().mean() >= 0.9
    before = model.layers[0].weight.detach().clone()
    y = torch.randint(0, 10, (32,), device="cuda")
    make_step(model.train(), adam(model.parameters(), 1e-3, 5e-4), LossWeights(), None, "bf16")(x, y)
    assert model.layers[0].weight.dtype == torch.float32 and not torch.equal(model.layers[0].weight, before)


def test_bf16_attacks_step_in_float32_within_the_threat_model():
    torch.manual_seed(0)
    model = cnnf.create_model("paper_mnist", iterations=1)
    x, y = torch.rand(4, 1, 28, 28) * 2 - 1, torch.randint(0, 10, (4,))
    source = gradient_source(model, "e2e", precision="bf16")
    assert source(x).dtype == torch.float32
    x_adv = pgd(source, x, y, eps=0.1, steps=3, generator=torch.Generator().manual_seed(0))
    assert x_adv.dtype == torch.float32 and (x_adv - x).abs().max() <= 0.2 + 1e-6 and not torch.equal(x_adv, x)


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    make_fashion_dir(tmp_path / "data", n_train=32, n_test=8)
    config = {"model": "paper_mnist", "iterations": 1, "epochs": 1, "batch_size": 16, "val_size": 8,
              "checkpoint_every": 100, "eval_batch_size": 16, "threads": 1, "data_dir": str(tmp_path / "data"),
              "device": "cpu"}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_precision_is_saved_with_the_run_and_kept_on_resume(tiny_config: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", str(tiny_config), "--out", str(run), "--precision", "bf16"]) == 0
    assert saved_config(run).precision == "bf16"
    assert checkpoint.read(run / "checkpoint.pt")["config"]["precision"] == "bf16"
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "epochs": 2}))  # one more epoch to resume
    assert main(["train", "--resume", str(run)]) == 0
    assert "resuming" in capsys.readouterr().out
    assert checkpoint.read(run / "model.pt")["config"]["precision"] == "bf16"
    assert main(["train", "--resume", str(run), "--precision", "fp32"]) == 2
    assert "drop --config, --set and --precision" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["train", "--config", "CONFIG", "--set", "precision=fp16"],
                                  ["test", "--pretrained", "cnn_fmnist", "--precision", "fp16"],
                                  ["evaluate", "--pretrained", "cnn_fmnist", "--precision", "fp16"]])
def test_an_unknown_precision_is_one_line(tiny_config: Path, capsys, args: list[str]):
    assert main([str(tiny_config) if a == "CONFIG" else a for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnnf: error:") and "\n" not in err and "precision must be one of fp32, bf16, got 'fp16'" in err


def test_a_bf16_sweep_says_so_and_is_not_resumed_from_an_fp32_one(tmp_path: Path):
    from cnnf.attacks import parse_attacks
    from cnnf.data import ImageSet
    from cnnf.evaluate import Sweep, _fingerprint, run_sweep

    torch.manual_seed(0)
    model = cnnf.create_model("paper_mnist", iterations=1)
    images = ImageSet(torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (6,)))
    sweeps = {p: Sweep(parse_attacks("fgsm"), ["e2e"], [0.1], [0, 1], batch_size=3, precision=p) for p in ("fp32", "bf16")}
    result = run_sweep(model, images, sweeps["bf16"])
    assert result.meta["precision"] == "bf16" and all(0 <= r.accuracy_mean <= 1 for r in result.rows)
    assert _fingerprint(model, images, sweeps["fp32"], None) != _fingerprint(model, images, sweeps["bf16"], None)


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_native_bfloat16_warns_that_it_is_slower(monkeypatch, native: bool):
    monkeypatch.setattr(precision, "native_bf16_cpu", lambda: native)
    precision._warn_emulated_bf16.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with autocast("bf16", "cpu"), autocast("bf16", "cpu"), autocast("fp32", "cpu"):
            pass
    slower = [w for w in caught if "no native bfloat16" in str(w.message)]
    assert len(slower) == (0 if native else 1)
