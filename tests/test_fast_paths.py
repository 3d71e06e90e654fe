"""The optimised layers compute what their straightforward versions compute (issue 7).

The library's layers are written for speed: channels-last feature maps, masks applied by
multiplication, a fused instance-norm backward. Here every layer is swapped for the plain
NCHW implementation (torch.where masks, F.rms_norm with autograd's own backward, NCHW
pooling) and the full iterative model, its loss and its gradients are compared in float64.
"""

import pytest
import torch
import torch.nn.functional as F

import cnnf
from cnnf import layers
from cnnf.layers import _RMSNormHW
from cnnf.losses import cnnf_loss

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


def _use_plain_layers(model, monkeypatch):
    for layer in model.layers:
        monkeypatch.setattr(layer, "forward", lambda f, drive=None, layer=layer: _plain_forward(layer, f, drive))
        monkeypatch.setattr(layer, "feedback", lambda g, latent, layer=layer: _plain_feedback(layer, g, latent))


def _loss_and_gradients(model, x, y):
    model.zero_grad()
    x = x.clone().requires_grad_()
    run = model.infer(x)
    loss, _ = cnnf_loss(model, run, y)
    loss.backward()
    return [t.detach().clone() for t in (run.output("last"), run.output("average"), loss, x.grad)] + [
        p.grad.clone() for p in model.parameters()
    ]


@pytest.mark.parametrize("name", cnnf.list_models())
def test_optimised_layers_match_the_plain_implementation(name, monkeypatch):
    torch.manual_seed(0)
    model = cnnf.create_model(name, iterations=3).double()
    for p in model.parameters():
        if p.dim() == 1:
            torch.nn.init.normal_(p, 0, 0.5)
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64) * 2 - 1
    y = torch.tensor([0, 3, 5, 9])
    fast = _loss_and_gradients(model, x, y)
    _use_plain_layers(model, monkeypatch)
    plain = _loss_and_gradients(model, x, y)
    assert len(fast) == len(plain) > 4
    for a, b in zip(fast, plain):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_comparison_catches_a_wrong_fused_gradient(monkeypatch):
    """The comparison above can fail: a norm backward missing its projection term is caught."""
    torch.manual_seed(0)
    model = cnnf.create_model("paper_mnist", iterations=1).double()
    x, y = torch.rand(2, 1, 28, 28, dtype=torch.float64) * 2 - 1, torch.tensor([1, 2])
    truncated = lambda ctx, dy: (ctx.saved_tensors[1] * dy, None)  # noqa: E731
    monkeypatch.setattr(_RMSNormHW, "backward", staticmethod(truncated))
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
