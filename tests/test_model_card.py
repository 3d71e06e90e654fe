"""Model cards list every way a run's training departs from the paper's appendix B.1."""

from __future__ import annotations

from cnnf.config import TrainConfig
from cnnf.model_card import deviations


def test_the_papers_recipe_has_no_deviations():
    assert deviations(30, TrainConfig().to_dict()) == []


def test_each_departure_is_named_with_the_papers_value():
    config = TrainConfig(lr_schedule="cosine", epochs=10, relu_mixing=0.1, train_subset=8000).to_dict()
    assert deviations(10, config) == [
        "10 epochs instead of the paper's 30",
        "the first 8000 shuffled training images instead of all 55000",
        "lr_schedule cosine instead of the paper's constant",
        "relu_mixing 0.1 instead of the paper's 0.0",
    ]


def test_adversarial_training_is_compared_with_the_papers_adversarial_budget():
    adversarial = {"mode": "augmentation", "attack": "pgd40", "eps": 0.3, "target": "first"}
    config = TrainConfig(adversarial=adversarial, lr=1e-4, epochs=90).to_dict()
    assert deviations(90, config) == []
    assert deviations(90, {**config, "lr": 1e-3}) == ["lr 0.001 instead of the paper's 0.0001"]
