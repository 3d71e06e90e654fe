"""benchmarks/speedup.py: each baseline must really run the code it names, and only inside its
context (otherwise its ratios would compare the fast backend with itself)."""

import sys
from pathlib import Path

import pytest
import torch

import cnnf
from cnnf.fast import kernels

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from speedup import BASELINES, compare, markdown  # noqa: E402


def _pool_index_dtype() -> torch.dtype:
    """int32 from the fast backend's pooling, int64 from the reference's."""
    model = cnnf.create_model("paper_mnist")
    return model.feedforward(torch.zeros(1, 1, 28, 28))[1][7].dtype


def test_the_reference_baseline_runs_the_reference_only_inside():
    with cnnf.use_backend("fast"):
        assert _pool_index_dtype() == torch.int32
        with BASELINES["reference"]():
            assert cnnf.get_backend() == "reference" and _pool_index_dtype() == torch.int64
        assert cnnf.get_backend() == "fast"


def test_the_torch_code_baseline_turns_the_kernels_off_only_inside():
    if not kernels.available():
        pytest.skip("fused kernels not built")
    with BASELINES["torch-code"]():
        assert not kernels.available()
    assert kernels.available()


def test_a_comparison_reports_both_rates():
    row = compare("reference", "paper_mnist", "inference", 1, batch=2, rounds=2, steps=1)
    assert row["on"] > 0 and row["off"] > 0 and row["speedup"] == pytest.approx(row["on"] / row["off"])
    assert len(row["runs"]["on"]) == len(row["runs"]["off"]) == 2
    report = {"baseline": "reference", "date": "now", "batch": 2, "threads": 1, "rounds": 2, "steps": 1,
              "kernels": True, "load_average_start": [0.0, 0.0, 0.0], "rows": [row]}
    assert "| paper_mnist | inference | 1 |" in markdown(report)
