"""The fast backend computes what the reference computes (docs/DESIGN.md section 9).

The whole iterative model, every loss term and every gradient are compared in float64 for both
architectures, at N = 0 and N > 0, with the fast backend's kernels and with its torch code
only; a wrong backward of either is caught. Kernel-by-kernel checks: tests/test_kernels.py.
"""

import pytest
import torch
import torch.nn.functional as F

import cnnf
from cnnf.fast import kernels, ops
from cnnf.losses import LossWeights, cnnf_loss

pytestmark = pytest.mark.usefixtures("float64")

CLOSE = {"rtol": 1e-9, "atol": 1e-12}
MNIST_MODELS = ["conv4_mnist", "paper_mnist"]  # residual networks and VGG: tests/test_architectures.py


def _model(name, iterations):
    torch.manual_seed(0)
    model = cnnf.create_model(name, iterations=iterations).double()
    for p in model.parameters():
        if p.dim() == 1:
            torch.nn.init.normal_(p, 0, 0.5)  # non-zero biases: eta and the cll term are exercised
    return model


def _everything(model, x, y, terms):
    """Logits of every step, reconstructions, both outputs, every loss term and every gradient
    (inputs and parameters); terms "all" adds the latent-likelihood and norm-matching losses,
    whose gradients also flow through the feedback signals."""
    model.zero_grad()
    x = x.clone().requires_grad_()
    weights = LossWeights() if terms == "paper" else LossWeights(cll=0.1, norm=0.1)
    run = model.infer(x, keep_activations=terms == "all")
    loss, breakdown = cnnf_loss(model, run, y, weights=weights)
    loss.backward()
    values = {f"logits {t}": y_t for t, y_t in enumerate(run.logits)}
    values |= {f"reconstruction {t}": g_t for t, g_t in enumerate(run.reconstructions)}
    values |= {"last": run.output("last"), "average": run.output("average"), "d x": x.grad}
    values |= {f"loss {name}": value for name, value in breakdown.items()}
    values |= {f"d {name}": p.grad for name, p in model.named_parameters()}
    return {name: value.detach().clone() for name, value in values.items()}


def _compare(name, iterations, terms, use_kernels):
    model = _model(name, iterations)
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64) * 2 - 1
    y = torch.tensor([0, 3, 5, 9])
    with cnnf.use_backend("fast"), kernels.use_kernels(use_kernels):
        fast = _everything(model, x, y, terms)
    with cnnf.use_backend("reference"):
        reference = _everything(model, x, y, terms)
    return fast, reference


@pytest.mark.parametrize("terms", ["paper", "all"])
@pytest.mark.parametrize("use_kernels", [True, False], ids=["kernels", "torch-code"])
@pytest.mark.parametrize("iterations", [0, 3])
@pytest.mark.parametrize("name", MNIST_MODELS)
def test_fast_backend_matches_the_reference(name, iterations, use_kernels, terms):
    fast, reference = _compare(name, iterations, terms, use_kernels)
    assert fast.keys() == reference.keys()
    assert len(reference) > 8 + 2 * iterations
    for key in reference:
        assert torch.allclose(fast[key], reference[key], **CLOSE), key


def _masks_ignored(ctx, d_out, d_mask):
    """A plausible kernel bug: the backward forgets the ReLU mask."""
    f, r, _ = ctx.saved_tensors
    d_f, d_b = kernels._extension().norm_bias_relu_backward(d_out, f, r, torch.empty(0))
    return d_f, (d_b.sum(0) if ctx.has_bias else None), None, None, None


def _projection_dropped(ctx, dy):
    """A plausible bug of the torch-code norm backward: the projection term is missing."""
    return ctx.saved_tensors[1] * dy, None


@pytest.mark.parametrize("use_kernels", [True, False], ids=["kernels", "torch-code"])
def test_the_comparison_catches_a_wrong_gradient(use_kernels, monkeypatch):
    if use_kernels and not kernels.available():
        pytest.skip("fused kernels not built (no compiler)")
    if use_kernels:
        monkeypatch.setattr(kernels._NormBiasReLU, "backward", staticmethod(_masks_ignored))
    else:
        monkeypatch.setattr(ops._RMSNormHW, "backward", staticmethod(_projection_dropped))
    fast, reference = _compare("paper_mnist", 1, "paper", use_kernels)
    assert torch.allclose(fast["last"], reference["last"], **CLOSE)
    assert not all(torch.allclose(fast[key], reference[key], **CLOSE) for key in reference)


def test_the_switch_chooses_the_code_that_runs():
    """The backends are told apart by their latents: int32 pooling indices (fast), torch's
    int64 (reference); `use_backend` restores the previous backend, also after an error."""
    model, x = cnnf.create_model("paper_mnist"), torch.zeros(1, 1, 28, 28)
    before = cnnf.get_backend()
    for name, dtype in (("fast", torch.int32), ("reference", torch.int64)):
        with cnnf.use_backend(name):
            assert cnnf.get_backend() == name
            assert model.feedforward(x)[1][7].dtype == dtype
    with pytest.raises(RuntimeError), cnnf.use_backend("reference"):
        raise RuntimeError
    assert cnnf.get_backend() == before
    with pytest.raises(ValueError, match="reference, fast"):
        cnnf.set_backend("fused")


def test_the_environment_chooses_the_default(monkeypatch):
    monkeypatch.setattr(cnnf.backend, "_current", None)
    monkeypatch.setenv("CNNF_BACKEND", "reference")
    assert cnnf.get_backend() == "reference"
    monkeypatch.setattr(cnnf.backend, "_current", None)
    monkeypatch.setenv("CNNF_BACKEND", "gpu")
    with pytest.raises(ValueError, match="CNNF_BACKEND"):
        cnnf.get_backend()


@pytest.mark.parametrize("padding", [0, 1])
def test_transposed_convolution_to_one_channel(padding):
    """The fast backend's matmul form of the feedback to one channel (paper_mnist's to the
    pixels): F.conv_transpose2d's values, and its own backward passes gradcheck."""
    conv = cnnf.layers.Conv2d(1, 4, 3, padding=padding).double()
    size = 9 - 2 * (1 - padding)
    g = torch.randn(2, 4, size, size).contiguous(memory_format=torch.channels_last)
    assert torch.allclose(ops.feedback(conv, g, None), F.conv_transpose2d(g, conv.weight, padding=padding), rtol=1e-12)
    assert torch.autograd.gradcheck(lambda t, w: ops._ConvTransposeToOneChannel.apply(t, w, padding),
                                    (g.requires_grad_(), conv.weight))


def test_instance_norm_backward():
    f = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops._RMSNormHW.apply(t, 1e-8), (f,))
    assert torch.allclose(ops._RMSNormHW.apply(f, 1e-8), F.rms_norm(f, f.shape[-2:], eps=1e-8), rtol=1e-14)


def test_feature_maps_are_channels_last():
    model = cnnf.create_model("paper_mnist", iterations=1).double()
    with cnnf.use_backend("fast"):
        run = model.infer(torch.rand(2, 1, 28, 28, dtype=torch.float64), keep_activations=True)
    maps = [a for step in run.activations for a in step if a is not None and a.dim() == 4]
    assert maps and all(a.is_contiguous(memory_format=torch.channels_last) for a in maps)


def test_kernels_are_built_where_the_tests_run():
    """`make setup` builds the kernels; without them the kernel comparisons would compare torch
    code with itself."""
    assert kernels.available()


@pytest.mark.parametrize("name", MNIST_MODELS)
def test_relu_mixing_runs_the_same_on_both_backends(name):
    """The released code's AdaReLU (relu_mixing > 0) is not a kernel: the fast backend runs it
    layer by layer, with the reference's values; it changes the iterations, not step 0."""
    torch.manual_seed(0)
    mixed = cnnf.create_model(name, iterations=2, relu_mixing=0.1).double()
    paper = cnnf.create_model(name, iterations=2).double()
    paper.load_state_dict(mixed.state_dict())
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64) * 2 - 1
    runs = {}
    for backend in cnnf.backend.BACKENDS:
        with cnnf.use_backend(backend):
            runs[backend] = mixed.infer(x).logits
    assert all(torch.allclose(a, b, **CLOSE) for a, b in zip(runs["fast"], runs["reference"]))
    steps = paper.infer(x).logits
    assert torch.allclose(steps[0], runs["fast"][0], **CLOSE)
    assert not torch.allclose(steps[2], runs["fast"][2], **CLOSE)
