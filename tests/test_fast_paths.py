"""The optimised layers compute what their straightforward versions compute (issue 7).

The library's layers are written for speed: channels-last feature maps, masks applied by
multiplication, a fused instance-norm backward, and the compiled kernels of `cnnf.fused`
(instance norm + bias + AdaReLU in one sweep, AdaPool in one pass). Here every layer is swapped
for the plain NCHW implementation (torch.where masks, F.rms_norm with autograd's own backward,
NCHW pooling, no kernels) and the full iterative model, its loss and its gradients are compared
in float64, with the kernels and with the layers' own torch code.
"""

import os

import pytest
import torch
import torch.nn.functional as F

import cnnf
from cnnf import fused, layers
from cnnf.layers import _RMSNormHW
from cnnf.losses import LossWeights, cnnf_loss

pytestmark = pytest.mark.usefixtures("float64")


def _plain_forward(layer, f, drive=None):
    if isinstance(layer, layers.Conv2d):
        return F.conv2d(f.contiguous(), layer.weight, padding=layer.padding), None
    if isinstance(layer, layers.InstanceNorm):
        return F.rms_norm(f, f.shape[-2:], eps=layer.eps), None
    if isinstance(layer, layers.AdaReLU):
        mask = F.relu(f) > 0 if drive is None else f * drive > 0
        return torch.where(mask, f, 0.0), mask
    if isinstance(layer, layers.AdaPool):
        f = f.contiguous()
        if drive is None:
            return F.max_pool2d(f, layer.size, return_indices=True)
        sign = torch.where(drive >= 0, 1.0, -1.0).to(f.dtype)
        upsampled = sign.repeat_interleave(layer.size, 2).repeat_interleave(layer.size, 3)
        pooled, index = F.max_pool2d(f * upsampled, layer.size, return_indices=True)
        return pooled * sign, index
    return type(layer).forward(layer, f, drive)


def _plain_feedback(layer, g, latent):
    if isinstance(layer, layers.Conv2d):
        return F.conv_transpose2d(g.contiguous(), layer.weight, padding=layer.padding)
    if isinstance(layer, layers.InstanceNorm):
        return F.rms_norm(g, g.shape[-2:], eps=layer.eps)
    if isinstance(layer, layers.AdaReLU):
        return torch.where(latent, g, 0.0)
    if isinstance(layer, layers.Flatten):
        return g.reshape(g.shape[0], *layer.shape)
    return type(layer).feedback(layer, g, latent)


def _without_kernels(monkeypatch):
    monkeypatch.setattr(fused, "accepts", lambda *maps: False)


def _use_plain_layers(model, monkeypatch):
    _without_kernels(monkeypatch)
    for layer in model.layers:
        monkeypatch.setattr(layer, "forward", lambda f, drive=None, layer=layer: _plain_forward(layer, f, drive))
        monkeypatch.setattr(layer, "feedback", lambda g, latent, layer=layer: _plain_feedback(layer, g, latent))


def _loss_and_gradients(model, x, y, terms="paper", drives_only=False):
    """Outputs, loss and gradients; terms "all" adds the latent-likelihood and norm-matching
    losses, whose gradients also flow through the feedback signals."""
    model.zero_grad()
    x = x.clone().requires_grad_()
    weights = LossWeights() if terms == "paper" else LossWeights(cll=0.1, norm=0.1)
    run = model.infer(x, keep_activations=terms == "all", drives_only=drives_only)
    loss, _ = cnnf_loss(model, run, y, weights=weights)
    loss.backward()
    return [t.detach().clone() for t in (run.output("last"), run.output("average"), loss, x.grad)] + [
        p.grad.clone() for p in model.parameters()
    ]


@pytest.mark.parametrize("terms", ["paper", "all"])
@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "torch-layers"])
@pytest.mark.parametrize("name", cnnf.list_models())
def test_optimised_layers_match_the_plain_implementation(name, kernels, terms, monkeypatch):
    if not kernels:
        _without_kernels(monkeypatch)
    torch.manual_seed(0)
    model = cnnf.create_model(name, iterations=3).double()
    for p in model.parameters():
        if p.dim() == 1:
            torch.nn.init.normal_(p, 0, 0.5)
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64) * 2 - 1
    y = torch.tensor([0, 3, 5, 9])
    fast = _loss_and_gradients(model, x, y, terms, drives_only=terms == "paper")  # as `cnnf train` runs them
    _use_plain_layers(model, monkeypatch)
    plain = _loss_and_gradients(model, x, y, terms)
    assert len(fast) == len(plain) > 4
    for a, b in zip(fast, plain):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def _masks_ignored(ctx, d_out, d_mask):
    """A plausible kernel bug: the backward forgets the ReLU mask."""
    f, r, _ = ctx.saved_tensors
    d_f, d_b = fused._extension().norm_bias_relu_backward(d_out, f, r, torch.empty(0))
    return d_f, (d_b.sum(0) if ctx.has_bias else None), None, None, None


def _projection_dropped(ctx, dy):
    """A plausible bug of the torch norm backward: the projection term is missing."""
    return ctx.saved_tensors[1] * dy, None


@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "torch-layers"])
def test_comparison_catches_a_wrong_fused_gradient(kernels, monkeypatch):
    """The comparison above can fail: a wrong backward of either fast path is caught."""
    if kernels and not fused.available():
        pytest.skip("fused kernels not built (CNNF_FUSED=0 or no compiler)")
    torch.manual_seed(0)
    model = cnnf.create_model("paper_mnist", iterations=1).double()
    x, y = torch.rand(2, 1, 28, 28, dtype=torch.float64) * 2 - 1, torch.tensor([1, 2])
    if kernels:
        monkeypatch.setattr(fused._NormBiasReLU, "backward", staticmethod(_masks_ignored))
    else:
        _without_kernels(monkeypatch)
        monkeypatch.setattr(_RMSNormHW, "backward", staticmethod(_projection_dropped))
    fast = _loss_and_gradients(model, x, y)
    _use_plain_layers(model, monkeypatch)
    plain = _loss_and_gradients(model, x, y)
    assert torch.allclose(fast[0], plain[0], rtol=1e-9, atol=1e-12)
    assert not all(torch.allclose(a, b, rtol=1e-9, atol=1e-12) for a, b in zip(fast, plain))


def test_fused_instance_norm_gradient():
    f = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: _RMSNormHW.apply(t, 1e-8), (f,))
    assert torch.equal(_RMSNormHW.apply(f, 1e-8), F.rms_norm(f, f.shape[-2:], eps=1e-8))


def test_feature_maps_are_channels_last():
    model = cnnf.create_model("paper_mnist", iterations=1).double()
    run = model.infer(torch.rand(2, 1, 28, 28, dtype=torch.float64), keep_activations=True)
    maps = [a for step in run.activations for a in step if a is not None and a.dim() == 4]
    assert maps and all(a.is_contiguous(memory_format=torch.channels_last) for a in maps)


@pytest.mark.skipif(os.environ.get("CNNF_FUSED") == "0", reason="kernels switched off with CNNF_FUSED=0")
def test_kernels_are_built_where_the_tests_run():
    """`make setup` builds the kernels; without this the kernel tests would compare torch with torch."""
    assert fused.available()
