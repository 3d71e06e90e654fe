"""benchmarks/throughput.py: a row per (model, N) on the device it names, and its estimate."""

import sys
from pathlib import Path

import pytest
import torch

import cnnf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from throughput import BUDGET_IMAGES, PAPER_EPOCHS, TRAIN_IMAGES, markdown, measure  # noqa: E402


def test_a_row_measures_both_steps_and_estimates_the_paper_budget():
    row = measure("paper_mnist", 1, torch.device("cpu"), batch=2, steps=1)
    assert row["train_images_per_s"] > 0 and row["inference_images_per_s"] > 0
    assert row["paper_budget_hours"] == pytest.approx(TRAIN_IMAGES * PAPER_EPOCHS / row["train_images_per_s"] / 3600)
    report = {"device_name": "test CPU", "device": "cpu", "batch": 2, "date": "now", "torch": torch.__version__,
              "backend": "fast", "precision": "fp32", "steps": 1, "rows": [row]}
    assert "| paper_mnist | 1 |" in markdown(report)


def test_every_registered_model_has_a_full_run_budget():
    assert set(BUDGET_IMAGES) == set(cnnf.list_models())


def test_a_bf16_row_is_measured_under_autocast():
    row = measure("paper_mnist", 1, torch.device("cpu"), batch=2, steps=1, precision="bf16")
    assert row["train_images_per_s"] > 0 and row["inference_images_per_s"] > 0
