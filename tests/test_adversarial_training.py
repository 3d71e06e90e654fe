"""Adversarial training: both modes of the paper, their loss targets, metrics and config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import cnnf
from cnnf import checkpoint
from cnnf.cli import main
from cnnf.losses import LossWeights
from cnnf.model_card import export_pretrained
from cnnf.steps import Adversary, make_step
from synthetic import make_fashion_dir


def _model_and_batch():
    torch.manual_seed(0)
    model = cnnf.create_model("paper_mnist", iterations=1)
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    return model, x, torch.randint(0, 10, (8,))


@pytest.mark.parametrize("mode", ["conventional", "augmentation"])
def test_reconstruction_targets_the_clean_images(mode, monkeypatch):
    """Both modes reconstruct toward the clean image's features; augmentation doubles the batch."""
    model, x, y = _model_and_batch()
    seen = {}

    def spy(model_, run, labels, target=None, weights=LossWeights()):
        seen.update(batch=len(labels), target=target, inputs=run.features[0])
        return real(model_, run, labels, target=target, weights=weights)

    from cnnf import steps

    real = steps.cnnf_loss
    monkeypatch.setattr(steps, "cnnf_loss", spy)
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    settings = {"mode": mode, "attack": "fgsm", "eps": 0.1, "target": "first"}
    result = make_step(model, optimizer, LossWeights(), settings)(x, y)
    expected_target = x if mode == "conventional" else torch.cat([x, x])
    assert torch.equal(seen["target"], expected_target)
    assert not torch.equal(seen["inputs"][: len(x)] if mode == "conventional" else seen["inputs"][len(x):], x)
    assert seen["batch"] == (8 if mode == "conventional" else 16)
    assert result.correct_adv is not None and (result.correct is None) == (mode == "conventional")


def test_adversary_stays_in_the_threat_model():
    model, x, y = _model_and_batch()
    adversary = Adversary.from_config(model, {"mode": "augmentation", "attack": "pgd7", "eps": 0.1, "target": "e2e"})
    x_adv = adversary(x, y)
    assert (x_adv - x).abs().max() <= 0.2 + 1e-6 and not torch.equal(x_adv, x)


@pytest.mark.parametrize(
    "settings, needle",
    [({"mode": "mixed", "attack": "fgsm", "eps": 0.3, "target": "first"}, "mode"),
     ({"mode": "augmentation", "attack": "fgsm", "eps": 3, "target": "first"}, "eps"),
     ({"mode": "augmentation", "attack": "fgsm", "eps": 0.3}, "missing"),
     ({"mode": "augmentation", "attack": "cw", "eps": 0.3, "target": "first"}, "cw")],
)
def test_bad_adversarial_settings(settings, needle):
    model, _, _ = _model_and_batch()
    with pytest.raises(ValueError, match=needle):
        Adversary.from_config(model, settings)


ADVERSARIAL = {"mode": "augmentation", "attack": "pgd7", "eps": 0.3, "target": "first"}


def _adversarial_run(tmp_path: Path, **extra) -> Path:
    make_fashion_dir(tmp_path / "data", n_train=120, n_test=10)
    config = {"model": "paper_mnist", "iterations": 1, "epochs": 1, "batch_size": 32, "val_size": 40, "lr": 1e-4,
              "threads": 1, "data_dir": str(tmp_path / "data"), "eval_batch_size": 40, "adversarial": ADVERSARIAL, **extra}
    path = tmp_path / "adv.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 0
    return tmp_path / "run"


def test_adversarial_run_records_clean_and_adversarial_accuracy(tmp_path: Path):
    record = json.loads((_adversarial_run(tmp_path) / "metrics.jsonl").read_text())
    assert 0 <= record["train_adv_acc"] <= 1 and 0 <= record["val_adv_acc"] <= 1 and record["train_acc"] is not None


def test_model_card_of_an_adversarial_fine_tune(tmp_path: Path):
    """The card names the training attack, its validation accuracy, the starting weights and
    the paper's 90 adversarial epochs; the shipped file loads as the trained model."""
    start = tmp_path / "start.pt"
    checkpoint.save_atomic(checkpoint.model_state(cnnf.create_model("paper_mnist", iterations=1)), start)
    run = _adversarial_run(tmp_path, init_from=str(start))
    shipped = export_pretrained(run, "adv_tiny", "cnnf train --config configs/x.yaml", out_dir=tmp_path / "shipped")
    text = (tmp_path / "shipped" / "adv_tiny.yaml").read_text()
    card = yaml.safe_load(text)
    assert card["adversarial_training"] == ADVERSARIAL and "&id" not in text
    record = json.loads((run / "metrics.jsonl").read_text())
    assert card["validation_adversarial_accuracy"] == record["val_adv_acc"]
    assert card["deviations"] == [f"fine-tuned from {start} instead of trained from scratch",
                                  f"{card['epochs']} epochs instead of the paper's 90"]
    trained, loaded = checkpoint.read(run / "model.pt")["model"], checkpoint.load_model(shipped).state_dict()
    assert all(torch.equal(trained[k], loaded[k]) for k in trained)
