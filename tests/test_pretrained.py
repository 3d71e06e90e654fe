"""Shipped weights: they exist, load safely, match their model cards, and classify real images."""

from __future__ import annotations

import pytest
import torch
import yaml

import cnnf
from cnnf import checkpoint
from cnnf.accuracy import accuracy_per_iteration
from cnnf.data import DataError, load_dataset

REQUIRED = ("cnn_fmnist", "cnnf5_fmnist",
            "adv_fgsm_cnn_fmnist", "adv_fgsm_cnnf5_fmnist", "adv_pgd40_cnn_fmnist", "adv_pgd40_cnnf5_fmnist")
CARD_KEYS = {"architecture", "settings", "data", "epochs", "deviations", "validation_accuracy", "test_accuracy", "command"}


@pytest.mark.parametrize("name", REQUIRED)
def test_required_models_are_shipped(name):
    assert name in checkpoint.pretrained_names()


@pytest.mark.parametrize("name", checkpoint.pretrained_names())
def test_card_matches_weights(name):
    card = yaml.safe_load((checkpoint.PRETRAINED_DIR / f"{name}.yaml").read_text())
    assert CARD_KEYS <= card.keys()
    model = cnnf.load_pretrained(name)
    assert model.settings() == card["settings"]
    assert card["command"].startswith("cnnf train --config configs/")


def _test_set(card: dict):
    """The test set of the data set the card's model was trained on (skip where it is missing)."""
    dataset = card["data"]["dataset"]
    try:
        return load_dataset(dataset)["test"]
    except DataError as error:
        pytest.skip(f"{dataset} not installed: {error}")


@pytest.mark.parametrize("name", checkpoint.pretrained_names())
def test_accuracy_on_a_slice_agrees_with_the_card(name):
    """On the first 1000 test images the accuracy is within 4 points of the card's full-set value."""
    card = yaml.safe_load((checkpoint.PRETRAINED_DIR / f"{name}.yaml").read_text())
    test = _test_set(card)
    subset = test.subset(torch.arange(1000))
    model = cnnf.load_pretrained(name)
    acc = accuracy_per_iteration(model, subset, model.iterations)["last"][-1]
    assert abs(acc - card["test_accuracy"]["last"][-1]) < 0.04


@pytest.mark.slow
@pytest.mark.parametrize("name", checkpoint.pretrained_names())
def test_card_test_accuracy_is_reproducible(name):
    card = yaml.safe_load((checkpoint.PRETRAINED_DIR / f"{name}.yaml").read_text())
    model = cnnf.load_pretrained(name)
    acc = accuracy_per_iteration(model, _test_set(card), model.iterations)
    # float32 results depend on the kernels (memory layout, thread count), which can flip a
    # borderline prediction: allow 5 of the 10,000 test images (adv_fgsm_cnnf5_fmnist's
    # N = 4 and 5 differ by 4 and 1 from its card on the 2-core development host, with the
    # code of 2026-12-03 morning as well); wrong weights miss by far more
    assert acc["last"] == pytest.approx(card["test_accuracy"]["last"], abs=5e-4)
