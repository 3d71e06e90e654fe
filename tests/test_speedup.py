"""benchmarks/speedup.py: each switch must really turn its optimisation off, and only inside
its context (otherwise its ratios would compare a path with itself)."""

import sys
from pathlib import Path

import pytest
import torch

import cnnf
from cnnf import fused, layers
from cnnf.losses import cnnf_loss

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from speedup import SWITCHES  # noqa: E402

PROBES = {  # switch: (model, the function its optimisation runs through)
    "kernels": ("conv4_mnist", (fused, "run_norm_segment")),
    "feedback": ("conv4_mnist", (fused, "run_feedback_segment")),
    "one-channel-conv": ("paper_mnist", (layers._ConvTransposeToOneChannel, "forward")),
}


def _calls(model, owner, name, monkeypatch):
    """How often `owner.name` runs in one inference with N = 1."""
    calls = []
    original = getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda *args: calls.append(1) or original(*args))
    with torch.inference_mode():
        model(torch.rand(2, 1, 28, 28) * 2 - 1)
    monkeypatch.setattr(owner, name, original)
    return len(calls)


def _reconstruction_gradient_is_channels_last(model) -> bool:
    run = model.infer(torch.rand(2, 1, 28, 28) * 2 - 1)
    seen = []  # the gradient as it flows (retain_grad would store a standard-layout copy)
    run.reconstructions[0].register_hook(seen.append)
    cnnf_loss(model, run, torch.tensor([1, 2]))[0].backward()
    return seen[0].is_contiguous(memory_format=torch.channels_last)


def test_the_mse_switch_turns_the_channels_last_gradient_off_only_inside():
    model = cnnf.create_model("conv4_mnist", iterations=1)  # reconstructs 32-channel maps
    assert _reconstruction_gradient_is_channels_last(model)
    with SWITCHES["mse-layout"]():
        assert not _reconstruction_gradient_is_channels_last(model)
    assert _reconstruction_gradient_is_channels_last(model)


@pytest.mark.parametrize("switch", PROBES)
def test_a_switch_turns_its_optimisation_off_only_inside(switch, monkeypatch):
    if switch != "one-channel-conv" and not fused.available():
        pytest.skip("fused kernels not built")
    name, (owner, function) = PROBES[switch]
    model = cnnf.create_model(name, iterations=1)
    assert _calls(model, owner, function, monkeypatch) > 0
    with SWITCHES[switch]():
        assert _calls(model, owner, function, monkeypatch) == 0
    assert _calls(model, owner, function, monkeypatch) > 0
