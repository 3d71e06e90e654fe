"""CNN-F model invariants (docs/DESIGN.md section 5) and the registry contract, on both backends."""

import pytest
import torch
from torch import nn

import cnnf
from cnnf import layers
from cnnf.losses import LossWeights, cnnf_loss

pytestmark = pytest.mark.usefixtures("float64")


@pytest.fixture(autouse=True, params=cnnf.backend.BACKENDS)
def each_backend(request):
    with cnnf.use_backend(request.param):
        yield request.param

MODELS = ["conv4_mnist", "paper_mnist"]  # the 28 x 28 networks; the larger ones: tests/test_architectures.py


def _images(n=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=gen, dtype=torch.float64) * 2 - 1


def _model(name, **overrides):
    """A float64 model with random non-zero biases (so the eta term is exercised)."""
    model = cnnf.create_model(name, **overrides).double()
    with torch.no_grad():
        for layer in model.layers:
            if isinstance(layer, layers.Bias):
                layer.bias.normal_(0, 0.5)
    return model


def _identity_gap(model, x, drive):
    """<u, v(x)> - (<g(0), x> + eta(u, z)) for a random u; zero by Lemma A.1."""
    logits, latents = model.feedforward(x, from_layer=0, drive=drive)
    u = torch.randn_like(logits)
    fb = model.feedback(u, latents, to_layer=0)
    lhs = (u * logits).sum(1)
    rhs = (fb.features * x).flatten(1).sum(1) + model.eta(fb)
    return lhs, rhs, u, fb


def _adaptive_drive(model, x):
    logits, latents = model.feedforward(x)
    return model.feedback(logits, latents, to_layer=0).signals


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("adaptive", [False, True], ids=["first-pass", "adaptive-pass"])
def test_generative_classifier_identity(name, adaptive):
    model, x = _model(name, norm=None), _images()
    drive = _adaptive_drive(model, x) if adaptive else None
    lhs, rhs, _, _ = _identity_gap(model, x, drive)
    assert torch.allclose(lhs, rhs, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", MODELS)
def test_feedback_is_the_vector_jacobian_product(name):
    model = _model(name, norm=None)
    x = _images()
    drive = _adaptive_drive(model, x)
    x.requires_grad_(True)
    _, _, u, fb = _identity_gap(model, x, drive)
    logits, _ = model.feedforward(x, from_layer=0, drive=drive)
    (grad,) = torch.autograd.grad((u * logits).sum(), x)
    assert torch.allclose(fb.features, grad, rtol=1e-10, atol=1e-12)


def _eq3_literal_relu(self, f, drive=None):
    """AdaReLU as eq. 3 prints it: ReLU(f) where g >= 0, ReLU(-f) where g < 0."""
    if drive is None:
        out = torch.relu(f)
        return out, out > 0
    return torch.where(drive >= 0, torch.relu(f), torch.relu(-f)), f * drive > 0


def test_identity_test_rejects_the_literal_eq3_adarelu(monkeypatch):
    model, x = _model("paper_mnist", norm=None), _images()
    drive = _adaptive_drive(model, x)
    monkeypatch.setattr(layers.AdaReLU, "forward", _eq3_literal_relu)
    lhs, rhs, _, _ = _identity_gap(model, x, drive)
    assert not torch.allclose(lhs, rhs, rtol=1e-6, atol=1e-6)


def _plain_cnn(model):
    """The same network written with torch.nn's standard modules, sharing the weights."""
    modules = []
    for layer in model.layers:
        if isinstance(layer, layers.Conv2d):
            o, i, k, _ = layer.weight.shape
            conv = nn.Conv2d(i, o, k, padding=layer.padding, bias=False)
            conv.weight = layer.weight
            modules.append(conv)
        elif isinstance(layer, layers.Linear):
            lin = nn.Linear(layer.weight.shape[1], layer.weight.shape[0], bias=False)
            lin.weight = layer.weight
            modules.append(lin)
        elif isinstance(layer, layers.InstanceNorm):
            modules.append(_RMS(layer.eps))
        elif isinstance(layer, layers.Bias):
            modules.append(_AddBias(layer))
        elif isinstance(layer, layers.AdaReLU):
            modules.append(nn.ReLU())
        elif isinstance(layer, layers.AdaPool):
            modules.append(nn.MaxPool2d(layer.size))
        else:
            modules.append(nn.Flatten())
    return nn.Sequential(*modules)


class _RMS(nn.Module):
    def __init__(self, eps):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        return nn.functional.rms_norm(x, x.shape[-2:], eps=self.eps)


class _AddBias(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return x + self.layer.broadcast()


# float64 round-off: the backends and torch.nn sum in different orders (and layouts)
ROUND_OFF = {"rtol": 1e-12, "atol": 1e-13}


@pytest.mark.parametrize("name", MODELS)
def test_zero_iterations_is_the_plain_cnn(name):
    model, x = _model(name, iterations=0), _images()
    with torch.no_grad():
        assert torch.allclose(model(x), _plain_cnn(model)(x), **ROUND_OFF)
        run = model.infer(x)
    assert len(run.logits) == 1 and run.feedbacks == [] and run.iterations_used.tolist() == [0, 0, 0]


def test_plain_cnn_reference_is_sensitive_to_the_nonlinearity():
    """The comparison above can fail: swapping max- for avg-pooling changes it."""
    model, x = _model("paper_mnist"), _images()
    reference = _plain_cnn(model)
    assert isinstance(reference[7], nn.MaxPool2d)
    reference[7] = nn.AvgPool2d(2)
    with torch.no_grad():
        assert not torch.allclose(model(x), reference(x), **ROUND_OFF)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("output", ["last", "average"])
def test_batch_equals_per_sample(name, output):
    model, x = _model(name, iterations=3, output=output, residual=0.5), _images(4)
    with torch.no_grad():
        batch = model(x)
        single = torch.cat([model(x[i : i + 1]) for i in range(len(x))])
    assert torch.allclose(batch, single, rtol=1e-10, atol=1e-12)


def test_residual_step_and_output_modes():
    model, x = _model("paper_mnist", iterations=2, residual=0.3), _images()
    with torch.no_grad():
        run = model.infer(x)
    h0, h1, g0 = run.features[0], run.features[1], run.reconstructions[0]
    assert torch.allclose(h1, h0 + 0.3 * (g0 - h0))
    assert torch.allclose(run.output("average"), (run.logits[0] + run.logits[1] + run.logits[2]) / 3)
    assert torch.equal(run.output("last"), run.logits[2])


def test_infer_matches_the_explicit_algorithm():
    """Algorithm 1 written out with the public primitives gives the same logits."""
    model, x = _model("conv4_mnist", iterations=2), _images()
    k = model.reconstruct_to
    with torch.no_grad():
        h = model.encode(x)
        logits, z = model.feedforward(h, from_layer=k)
        for _ in range(2):
            fb = model.feedback(logits, z)
            logits, z = model.feedforward(fb.features, from_layer=k, drive=fb.signals)
        assert torch.equal(logits, model(x))


@pytest.mark.parametrize("name", MODELS)
def test_signals_are_kept_only_when_asked(name):
    """infer keeps the feedback signals only with keep_activations (the fast backend then
    computes only the drives); the logits are the same either way, and the consumers of the
    signals (eta, the norm-matching loss) refuse a trajectory without them."""
    model, x = _model(name, iterations=2), _images()
    lean, full = model.infer(x), model.infer(x, keep_activations=True)
    assert all(fb.signals is None for fb in lean.feedbacks) and lean.activations is None
    assert all(len(fb.signals) == len(model.layers) for fb in full.feedbacks)
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(lean.logits, full.logits))
    with pytest.raises(ValueError, match="keep_activations=True"):
        model.eta(lean.feedbacks[0])
    with pytest.raises(ValueError, match="keep_activations=True"):
        cnnf_loss(model, lean, torch.tensor([0, 1, 2]), weights=LossWeights(norm=0.1))


@pytest.mark.parametrize("name", MODELS)
def test_reconstruction_gradients_reach_the_shared_weights(name):
    model, x = _model(name, iterations=2), _images()
    run = model.infer(x)
    loss, terms = cnnf_loss(model, run, torch.tensor([0, 1, 2]), weights=LossWeights(ce=0.0, rec=1.0))
    loss.backward()
    start = model.block_ends[model.reconstruct_to]
    for layer in model.layers[start:]:
        if isinstance(layer, (layers.Conv2d, layers.Linear)):
            assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert terms["rec"] > 0


def _projection_model():
    """A hand-built CNN-F on 2x2 images: h -> ReLU(h) -> W2 with W2^T W2 projecting onto the
    constant image. A constant positive image is self-consistent: g_0 = x exactly."""
    spec = {"input_shape": [1, 2, 2], "blocks": [["flatten", "linear 4", "bias", "relu"], ["linear 2", "bias"]]}
    model = cnnf.CNNF(spec).double()
    with torch.no_grad():
        model.layers[1].weight.copy_(torch.eye(4))
        model.layers[4].weight.copy_(torch.tensor([[1.0] * 4, [-1.0] * 4]) / 8**0.5)
    return model


SELF_CONSISTENT = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
INCONSISTENT = torch.tensor([0.5, -0.3, 0.2, -0.9], dtype=torch.float64).view(1, 1, 2, 2)


def test_adaptive_stopping_stops_early_on_a_self_consistent_input():
    model = _projection_model()
    with torch.no_grad():
        settled = model.infer(SELF_CONSISTENT, iterations=10, tol=1e-3)
        unsettled = model.infer(INCONSISTENT, iterations=10, tol=1e-3)
        full = model.infer(SELF_CONSISTENT, iterations=10)
    assert torch.allclose(settled.reconstructions[0], SELF_CONSISTENT)
    assert settled.iterations_used.item() == 1
    assert unsettled.iterations_used.item() == 10
    assert full.iterations_used.item() == 10 and len(full.logits) == 11


def test_adaptive_stopping_freezes_finished_samples():
    model = _projection_model()
    with torch.no_grad():
        run = model.infer(torch.cat([SELF_CONSISTENT, INCONSISTENT]), iterations=6, tol=1e-3)
        alone = model.infer(INCONSISTENT, iterations=6, tol=1e-3)
    assert run.iterations_used.tolist() == [1, 6]
    assert torch.equal(run.features[-1][0], run.features[1][0])
    assert torch.allclose(run.logits[-1][1], alone.logits[-1][0])


@pytest.mark.parametrize("name", MODELS)
def test_registered_model_contract(name):
    assert_model_contract(cnnf.create_model(name, iterations=2).float())


def assert_model_contract(model: cnnf.CNNF) -> None:
    """Two random images in: finite logits of the right shape at every step, reconstructions
    shaped like the features they replace, and a finite gradient for every parameter."""
    x = torch.rand(2, *model.input_shape, dtype=torch.float32) * 2 - 1
    run = model.infer(x)
    assert run.output().shape == (2, model.num_classes)
    assert all(torch.isfinite(y).all() for y in run.logits)
    assert run.reconstructions[0].shape == run.features[0].shape
    model(x).logsumexp(1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_weights_are_tied_between_directions():
    model = _model("paper_mnist")
    n_weights = sum(isinstance(l, (layers.Conv2d, layers.Linear)) for l in model.layers)
    n_biases = sum(isinstance(l, layers.Bias) for l in model.layers)
    assert len(list(model.parameters())) == n_weights + n_biases


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.zeros(1, 28, 28), "3-d tensor"),
        (torch.zeros(2, 3, 28, 28), "channel"),
        (torch.zeros(2, 1, 32, 32), "size 28x28"),
        (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), "floating"),
        (torch.full((2, 1, 28, 28), float("nan")), "NaN"),
        (torch.full((2, 1, 28, 28), 255.0), "[-1, 1]"),
        ([[0.0]], "torch.Tensor"),
        (torch.zeros(0, 1, 28, 28), "at least one sample"),
    ],
)
def test_input_checks(x, message):
    model = cnnf.create_model("paper_mnist", iterations=1)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        model(x)


def test_range_tolerance_admits_round_off():
    model = cnnf.create_model("paper_mnist").double()
    model(torch.full((1, 1, 28, 28), 1.0 + 1e-6))


def test_registry_errors_list_what_exists():
    with pytest.raises(ValueError, match="paper_mnist"):
        cnnf.create_model("resnet")
    with pytest.raises(ValueError, match="iterations"):
        cnnf.create_model("paper_mnist", iteratons=2)
    with pytest.raises(ValueError, match="reconstruct_to"):
        cnnf.create_model("paper_mnist", reconstruct_to=9)
    with pytest.raises(ValueError, match="output"):
        cnnf.create_model("paper_mnist", output="mean")


def test_norm_override_removes_instance_norm():
    model = cnnf.create_model("conv4_mnist", norm=None)
    assert not any(isinstance(l, layers.InstanceNorm) for l in model.layers)
