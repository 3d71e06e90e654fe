"""Ship a trained run as a pretrained model: a small weights file plus a model card (YAML)."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

import yaml

from cnnf import checkpoint
from cnnf.accuracy import accuracy_per_iteration
from cnnf.data import load_dataset
from cnnf.train import read_metrics

PAPER_EPOCHS = 30              # standard training (appendix B.1)
PAPER_EPOCHS_ADVERSARIAL = 90  # adversarial training (appendix B.1)
PAPER_SETTINGS = {"lr_schedule": "constant", "residual": 1.0, "relu_mixing": 0.0, "alpha_rec": 0.1,
                  "alpha_cll": 0.0, "alpha_norm": 0.0, "weight_decay": 5e-4}
"""Training settings of the paper's appendix B.1 that a card lists when a run departs from them."""


def export_pretrained(run_dir: str | Path, name: str, command: str, out_dir: Path = checkpoint.PRETRAINED_DIR,
                      note: str | None = None) -> Path:
    """Copy `run_dir`'s final model to out_dir/NAME.pt and write out_dir/NAME.yaml, its card,
    with the validation accuracy of the last epoch, the clean test accuracy per iteration, every
    way the training departs from the paper's (`deviations`) and `note`, the reason for them."""
    run_dir = Path(run_dir)
    state = checkpoint.read(run_dir / "model.pt")
    model = checkpoint.model_from_state(state, run_dir / "model.pt")
    config = state["config"]
    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"{run_dir / 'metrics.jsonl'} records no finished epoch; export a run that has trained")
    test = accuracy_per_iteration(model, load_dataset(config["dataset"], config["data_dir"])["test"], model.iterations)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.save_atomic({**checkpoint.model_state(model), "config": config}, out_dir / f"{name}.pt")
    card = {
        "name": name,
        "architecture": config["model"],
        "settings": model.settings(),
        "data": {"dataset": config["dataset"], "train_images": _train_images(config),
                 "validation_images": config["val_size"], "test_images": 10000},
        "epochs": len(records),
        "deviations": deviations(len(records), config),
        **({"note": note} if note else {}),
        "validation_accuracy": records[-1]["val_acc"],
        **_adversarial_card(config, records[-1]),
        "test_accuracy": {**test, "iterations": list(range(model.iterations + 1))},
        "train_images_per_s": records[-1]["images_per_s"],
        "command": command,
        "training_config": config,
        "git_revision": git_revision(),
        "date": datetime.date.today().isoformat(),
    }
    (out_dir / f"{name}.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    return out_dir / f"{name}.pt"


def _train_images(config: dict) -> int:
    return config["train_subset"] or 60000 - config["val_size"]


def deviations(epochs: int, config: dict) -> list[str]:
    """How a run of `epochs` epochs with training `config` departs from the paper's appendix B.1
    (facts only; the card's `note` says why)."""
    adversarial = bool(config.get("adversarial"))
    paper = {**PAPER_SETTINGS, "lr": 1e-4 if adversarial else 1e-3}
    paper_epochs = PAPER_EPOCHS_ADVERSARIAL if adversarial else PAPER_EPOCHS
    found = []
    if config.get("init_from"):
        found.append(f"fine-tuned from {config['init_from']} instead of trained from scratch")
    if epochs != paper_epochs:
        found.append(f"{epochs} epochs instead of the paper's {paper_epochs}")
    if config.get("train_subset"):
        everything = _train_images({**config, "train_subset": None})
        found.append(f"the first {config['train_subset']} shuffled training images instead of all {everything}")
    for key, paper_value in paper.items():
        if config.get(key, paper_value) != paper_value:
            found.append(f"{key} {config[key]} instead of the paper's {paper_value}")
    return found


def _adversarial_card(config: dict, last_epoch: dict) -> dict:
    """Card entries of an adversarially trained model: its training attack and the accuracy
    on that attack's images (first 1000 validation images, last epoch)."""
    if not config.get("adversarial"):
        return {}
    return {"adversarial_training": dict(config["adversarial"]),  # a copy: no YAML alias in the card
            "validation_adversarial_accuracy": last_epoch["val_adv_acc"]}


def git_revision() -> str:
    """HEAD of the repository the command runs in, or "unknown"."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
