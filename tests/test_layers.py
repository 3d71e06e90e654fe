"""Layer twins: adjoint identity (invariant 1), MAP latents (invariant 3), normalisation."""

import pytest
import torch
import torch.nn.functional as F

from cnnf import layers

pytestmark = pytest.mark.usefixtures("float64")


def _inner(a, b):
    return (a * b).sum()


def test_conv_adjoint():
    conv = layers.Conv2d(3, 5, 3, padding=1).double()
    f, g = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 8, 8)
    out, _ = conv(f)
    assert torch.allclose(_inner(out, g), _inner(f, conv.feedback(g, None)), rtol=1e-12)


def test_conv_adjoint_without_padding():
    conv = layers.Conv2d(2, 4, 3).double()
    f, g = torch.randn(2, 2, 9, 9), torch.randn(2, 4, 7, 7)
    out, _ = conv(f)
    assert torch.allclose(_inner(out, g), _inner(f, conv.feedback(g, None)), rtol=1e-12)


def test_conv_adjoint_down_to_one_channel():
    conv = layers.Conv2d(1, 4, 3, padding=1).double()
    f, g = torch.randn(2, 1, 9, 9), torch.randn(2, 4, 9, 9)
    out, _ = conv(f)
    assert torch.allclose(_inner(out, g), _inner(f, conv.feedback(g, None)), rtol=1e-12)


def test_linear_adjoint_and_single_parameter():
    lin = layers.Linear(7, 4).double()
    f, g = torch.randn(3, 7), torch.randn(3, 4)
    out, _ = lin(f)
    assert torch.allclose(_inner(out, g), _inner(f, lin.feedback(g, None)), rtol=1e-12)
    assert len(list(lin.parameters())) == 1


def test_pool_and_relu_adjoint_with_fixed_latents():
    f, drive = torch.randn(2, 3, 6, 6), torch.randn(2, 3, 3, 3)
    pool = layers.AdaPool(2, (6, 6))
    out, index = pool(f, drive)
    g = torch.randn_like(out)
    # with the choice fixed, pooling is a selection S f and its feedback is S^T g
    assert torch.allclose(_inner(out, g), _inner(f, pool.feedback(g, index)), rtol=1e-12)
    relu = layers.AdaReLU()
    drive = torch.randn_like(f)
    out, mask = relu(f, drive)
    g = torch.randn_like(f)
    assert torch.allclose(_inner(out, g), _inner(f, relu.feedback(g, mask)), rtol=1e-12)


def test_flatten_and_bias_feedback():
    flat = layers.Flatten((2, 3, 3))
    f = torch.randn(4, 2, 3, 3)
    out, _ = flat(f)
    assert torch.equal(flat.feedback(out, None), f)
    bias = layers.Bias(2, spatial=True).double()
    with torch.no_grad():
        bias.bias.copy_(torch.tensor([1.0, -2.0]))
    out, _ = bias(f)
    assert torch.allclose(out - f, torch.tensor([1.0, -2.0]).view(1, 2, 1, 1).expand_as(f))
    assert torch.equal(bias.feedback(f, None), f)


def test_adarelu_map_latent_hand_built():
    f = torch.tensor([[1.0, -2.0, 3.0, -4.0, 0.0]])
    g = torch.tensor([[1.0, 1.0, -1.0, -1.0, 1.0]])
    out, z = layers.AdaReLU()(f, g)
    assert z.tolist() == [[True, False, False, True, False]]
    assert out.tolist() == [[1.0, 0.0, 0.0, -4.0, 0.0]]  # z * f, not ReLU(-f) (eq. 3 literal)


def test_adarelu_first_pass_is_relu():
    f = torch.randn(3, 4, 5, 5)
    out, z = layers.AdaReLU()(f)
    assert torch.equal(out, F.relu(f)) and torch.equal(z, f > 0)


def test_adarelu_mask_is_sign_agreement():
    f, g = torch.randn(1000), torch.randn(1000)
    _, z = layers.AdaReLU()(f, g)
    assert torch.equal(z, torch.sign(f) == torch.sign(g))


def test_adapool_map_latent_hand_built():
    f = torch.tensor([[[[1.0, 2.0, 5.0, -1.0],
                        [3.0, 4.0, 0.0, 2.0]]]])
    drive = torch.tensor([[[[1.0, -1.0]]]])
    pool = layers.AdaPool(2, (2, 4))
    out, index = pool(f, drive)
    assert out.tolist() == [[[[4.0, -1.0]]]]  # max where g >= 0, min where g < 0
    assert index.tolist() == [[[[5, 3]]]]  # flat h * W + w in the plane
    back = pool.feedback(torch.tensor([[[[10.0, 20.0]]]]), index)
    assert back.tolist() == [[[[0.0, 0.0, 0.0, 20.0], [0.0, 10.0, 0.0, 0.0]]]]


def test_adapool_zero_drive_takes_the_max():
    """g = 0 counts as g >= 0, including -0.0 (a masked negative feedback value is -0.0)."""
    f = torch.tensor([[[[1.0, 2.0, 5.0, -1.0],
                        [3.0, 4.0, 0.0, 2.0]]]])
    out, _ = layers.AdaPool(2, (2, 4))(f, torch.tensor([[[[0.0, -0.0]]]]))
    assert out.tolist() == [[[[4.0, 5.0]]]]


def test_adapool_picks_argmax_or_argmin_in_every_window():
    f, drive = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)
    out, index = layers.AdaPool(2, (8, 8))(f, drive)
    windows = F.unfold(f, 2, stride=2).view(2, 3, 4, 16)  # (B, C, 2*2, windows)
    expected = torch.where(drive.flatten(2) >= 0, windows.amax(2), windows.amin(2)).view_as(out)
    assert torch.equal(out, expected)
    assert torch.equal(f.flatten(2).gather(2, index.flatten(2)).view_as(out), out)


def test_adapool_first_pass_is_maxpool():
    f = torch.randn(2, 3, 6, 6)
    out, _ = layers.AdaPool(2, (6, 6))(f)
    assert torch.equal(out, F.max_pool2d(f, 2))


def test_instance_norm_divides_by_rms_without_centering():
    f = torch.randn(2, 3, 5, 5) + 3.0
    out, _ = layers.InstanceNorm(eps=0.0)(f)
    rms = f.pow(2).mean((2, 3), keepdim=True).sqrt()
    assert torch.allclose(out, f / rms, rtol=1e-12)
    assert torch.allclose(out.pow(2).mean((2, 3)), torch.ones(2, 3), rtol=1e-12)
    g = torch.randn(2, 3, 5, 5)
    assert torch.allclose(layers.InstanceNorm(eps=0.0).feedback(g, None), g / g.pow(2).mean((2, 3), keepdim=True).sqrt())


def test_layers_hold_no_state_between_calls():
    relu, f = layers.AdaReLU(), torch.randn(2, 4)
    before = dict(relu.__dict__)
    relu(f, torch.randn(2, 4))
    relu.feedback(f, f > 0)
    assert relu.__dict__.keys() == before.keys()
    assert not hasattr(relu, "reset")


def test_adarelu_mixing_is_the_released_codes_resrelu():
    """mixing m: f <- f + m (g - f), then the mask 1(f * g > 0) of the mixed f (the released
    code's resReLU); m = 0 is the paper's AdaReLU, value for value."""
    f, g = torch.tensor([[2.0, -1.0, 0.5, -3.0]]), torch.tensor([[1.0, 20.0, -1.0, -1.0]])
    out, z = layers.AdaReLU(mixing=0.1)(f, g)
    mixed = torch.tensor([[1.9, 1.1, 0.35, -2.8]])
    assert torch.allclose(out, mixed * torch.tensor([[1.0, 1.0, 0.0, 1.0]]))
    assert z.tolist() == [[True, True, False, True]]
    assert torch.equal(layers.AdaReLU(mixing=0.0)(f, g)[0], layers.AdaReLU()(f, g)[0])
    assert torch.equal(layers.AdaReLU(mixing=0.1)(f)[0], torch.relu(f))  # the first pass is a ReLU
