"""benchmarks/speedup.py: each switch must really turn its optimisation off, and only inside
its context (otherwise its ratios would compare a path with itself)."""

import importlib
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor

import cnnf
from cnnf import fused, layers
from cnnf.losses import cnnf_loss

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from speedup import SWITCHES  # noqa: E402

PROBES = {  # switch: (model, the function its optimisation runs through)
    "kernels": ("conv4_mnist", (fused, "run_norm_segment")),
    "norm-pool": ("conv4_mnist", (fused._NormBiasReLUPool, "apply")),
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


def _reconstruction_gradient(model, monkeypatch) -> tuple[Tensor, int]:
    """The gradient reaching the first reconstruction in one training loss, and how often the
    fused reconstruction loss ran for it."""
    calls = []
    original = fused.mean_squared_errors
    monkeypatch.setattr(fused, "mean_squared_errors", lambda *args: calls.append(1) or original(*args))
    run = model.infer(torch.rand(2, 1, 28, 28) * 2 - 1)
    seen = []  # the gradient as it flows (retain_grad would store a standard-layout copy)
    run.reconstructions[0].register_hook(seen.append)
    cnnf_loss(model, run, torch.tensor([1, 2]))[0].backward()
    monkeypatch.setattr(fused, "mean_squared_errors", original)
    return seen[0], len(calls)


def test_the_reconstruction_loss_switch_turns_the_fused_loss_off_only_inside(monkeypatch):
    if not fused.available():
        pytest.skip("fused kernels not built")
    model = cnnf.create_model("conv4_mnist", iterations=1)  # reconstructs 32-channel maps
    fused_gradient, calls = _reconstruction_gradient(model, monkeypatch)
    assert calls == 1
    with SWITCHES["reconstruction-loss"]():
        plain_gradient, calls = _reconstruction_gradient(model, monkeypatch)
        assert calls == 0
    assert _reconstruction_gradient(model, monkeypatch)[1] == 1
    # both paths keep the maps' channels-last layout in the gradient (the plain one through views)
    assert fused_gradient.is_contiguous(memory_format=torch.channels_last)
    assert plain_gradient.is_contiguous(memory_format=torch.channels_last)


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


def test_the_image_strides_switch_leaves_images_nchw_only_inside():
    images = torch.rand(2, 1, 28, 28)
    assert layers.channels_last(images).stride()[1] == 1  # NHWC strides: oneDNN's channels-last path
    with SWITCHES["image-strides"]():
        assert layers.channels_last(images).stride()[1] == 28 * 28
    assert layers.channels_last(images).stride()[1] == 1


def _feedback_maps_written(model, monkeypatch) -> int:
    """Maps the fused feedback returns (its output plus each signal written) in one inference."""
    written = []
    original = fused._FeedbackNorm.apply

    def counted(*args):
        outputs = original(*args)
        written.append(len(outputs))
        return outputs

    monkeypatch.setattr(fused._FeedbackNorm, "apply", counted)
    with torch.inference_mode():
        model(torch.rand(2, 1, 28, 28) * 2 - 1)
    monkeypatch.setattr(fused._FeedbackNorm, "apply", original)
    return sum(written)


def test_the_drives_only_switch_writes_every_signal_only_inside(monkeypatch):
    if not fused.available():
        pytest.skip("fused kernels not built")
    model = cnnf.create_model("paper_mnist", iterations=1)  # two fused feedback runs, neither with a drive map
    assert _feedback_maps_written(model, monkeypatch) == 2
    with SWITCHES["drives-only"]():
        assert _feedback_maps_written(model, monkeypatch) == 4
    assert _feedback_maps_written(model, monkeypatch) == 2


def _one_channel_gradients():
    torch.manual_seed(3)
    g = torch.randn(2, 4, 7, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(4, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    out = layers._ConvTransposeToOneChannel.apply(g, w, 1)
    return torch.autograd.grad(out, (g, w), torch.randn_like(out))


def test_the_one_channel_backward_switch_swaps_the_backward_only_inside():
    original = layers._ConvTransposeToOneChannel.backward
    with SWITCHES["one-channel-backward"]():
        assert layers._ConvTransposeToOneChannel.backward is not original
        matmul_gradients = _one_channel_gradients()
    assert layers._ConvTransposeToOneChannel.backward is original
    for a, b in zip(_one_channel_gradients(), matmul_gradients):  # both backward forms agree
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_the_fixed_channels_switch_takes_runtime_counts_only_inside():
    if not fused.available():
        pytest.skip("fused kernels not built")
    extension = fused._extension()
    assert extension.uses_fixed_channels()
    with SWITCHES["fixed-channels"]():
        assert not extension.uses_fixed_channels()
    assert extension.uses_fixed_channels()


def _pooled_drives(model) -> int:
    logits, latents = model.feedforward(torch.rand(2, 1, 28, 28) * 2 - 1)
    return sum(isinstance(s, fused.PooledDrive) for s in model.feedback(logits, latents, drives_only=True).signals)


def test_the_pooled_drive_switch_writes_the_relu_drive_as_a_map_only_inside():
    if not fused.available():
        pytest.skip("fused kernels not built")
    model = cnnf.create_model("conv4_mnist", iterations=1)  # two [norm, bias, relu, pool] runs in the feedback
    assert _pooled_drives(model) == 2
    with SWITCHES["pooled-drive"]():
        assert _pooled_drives(model) == 0
    assert _pooled_drives(model) == 2


def _adam_forms(optimizer, monkeypatch) -> list[bool]:
    """Whether each parameter update of one Adam step ran fused."""
    forms = []
    module = importlib.import_module("torch.optim.adam")  # `torch.optim.adam` is the function
    original = module.adam
    monkeypatch.setattr(module, "adam", lambda *args, **kw: forms.append(kw["fused"]) or original(*args, **kw))
    optimizer.step()
    monkeypatch.setattr(module, "adam", original)
    return forms


def test_the_fused_adam_switch_runs_the_foreach_update_only_inside(monkeypatch):
    from cnnf.train import adam

    weight = torch.nn.Parameter(torch.ones(3))
    weight.grad = torch.ones(3)
    optimizer = adam([weight], lr=1e-3, weight_decay=5e-4)
    assert _adam_forms(optimizer, monkeypatch) == [True]
    with SWITCHES["fused-adam"]():
        assert _adam_forms(optimizer, monkeypatch) == [False]
    assert _adam_forms(optimizer, monkeypatch) == [True]
    assert optimizer.param_groups[0]["fused"] and optimizer.param_groups[0]["foreach"] is None
