"""Ship a trained run as a pretrained model: a small weights file plus a model card (YAML)."""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path

import yaml

from cnnf import checkpoint
from cnnf.accuracy import accuracy_per_iteration
from cnnf.data import load_dataset

PAPER_EPOCHS = 30


def export_pretrained(run_dir: str | Path, name: str, command: str, out_dir: Path = checkpoint.PRETRAINED_DIR) -> Path:
    """Copy `run_dir`'s final model to out_dir/NAME.pt and write out_dir/NAME.yaml, its card,
    with the validation accuracy of the last epoch and the clean test accuracy per iteration."""
    run_dir = Path(run_dir)
    state = checkpoint.read(run_dir / "model.pt")
    model = checkpoint.model_from_state(state, run_dir / "model.pt")
    config = state["config"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
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
        "epochs_note": _epochs_note(len(records)),
        "validation_accuracy": records[-1]["val_acc"],
        "test_accuracy": {"last": test["last"], "average": test["average"], "iterations": list(range(model.iterations + 1))},
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


def _epochs_note(epochs: int) -> str:
    if epochs >= PAPER_EPOCHS:
        return f"the paper's {PAPER_EPOCHS} epochs"
    return f"{epochs} epochs instead of the paper's {PAPER_EPOCHS}: CPU time in the session that trained it allowed no more"


def git_revision() -> str:
    """HEAD of the repository the command runs in, or "unknown"."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
