"""Training losses: breakdown, coefficients, the class energies eta(c, z)."""

import pytest
import torch
import torch.nn.functional as F

import cnnf
from cnnf import layers
from cnnf.losses import LossWeights, class_energies, cnnf_loss

pytestmark = pytest.mark.usefixtures("float64")
MNIST_MODELS = ["conv4_mnist", "paper_mnist"]  # residual networks and VGG: tests/test_architectures.py


def _setup(iterations=2, name="paper_mnist"):
    model = cnnf.create_model(name, iterations=iterations).double()
    with torch.no_grad():
        for layer in model.layers:
            if isinstance(layer, layers.Bias):
                layer.bias.normal_(0, 0.5)
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    return model, x, torch.tensor([1, 2, 3, 4])


def test_breakdown_terms_and_total():
    model, x, y = _setup()
    run = model.infer(x, keep_activations=True)
    weights = LossWeights(ce=1.0, rec=0.1, cll=0.2, norm=0.3)
    total, terms = cnnf_loss(model, run, y, weights=weights)
    ce = sum(F.cross_entropy(l, y) for l in run.logits) / 3
    rec = sum(F.mse_loss(g, x) for g in run.reconstructions) / 2
    assert torch.allclose(terms["ce"], ce) and torch.allclose(terms["rec"], rec)
    assert terms["cll"] > 0 and terms["norm"] > 0
    expected = ce + 0.1 * rec + 0.2 * terms["cll"] + 0.3 * terms["norm"]
    assert torch.allclose(total, expected) and torch.allclose(terms["total"], expected)


def test_paper_defaults():
    assert LossWeights() == LossWeights(ce=1.0, rec=0.1, cll=0.0, norm=0.0)


def test_zero_iterations_is_cross_entropy_only():
    model, x, y = _setup(iterations=0)
    total, terms = cnnf_loss(model, model.infer(x), y)
    assert torch.allclose(total, F.cross_entropy(model(x), y)) and terms["rec"] == 0


def test_target_features_replace_the_input():
    model, x, y = _setup()
    run = model.infer(x)
    clean = torch.zeros_like(x)
    _, terms = cnnf_loss(model, run, y, target=clean)
    assert torch.allclose(terms["rec"], sum(g.pow(2).mean() for g in run.reconstructions) / 2)


@pytest.mark.parametrize("name", MNIST_MODELS)
def test_class_energies_match_one_feedback_per_class(name):
    model, x, _ = _setup(name=name)
    _, latents = model.feedforward(model.encode(x), from_layer=model.reconstruct_to)
    energies = class_energies(model, latents)
    for c in range(model.num_classes):
        one_hot = F.one_hot(torch.full((4,), c), model.num_classes).double()
        assert torch.allclose(energies[:, c], model.eta(model.feedback(one_hot, latents)))


def test_norm_term_needs_activations():
    model, x, y = _setup()
    with pytest.raises(ValueError, match="keep_activations"):
        cnnf_loss(model, model.infer(x), y, weights=LossWeights(norm=1.0))
