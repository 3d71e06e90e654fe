"""Every shipped config loads, type-checks and builds its model."""

from pathlib import Path

import pytest

from cnnf.config import load_config
from cnnf.steps import Adversary
from cnnf.train import build_model

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_every_architecture_and_dataset_has_configs():
    names = {p.stem for p in CONFIGS}
    for data in ("fmnist", "mnist"):
        for model in ("cnn", "cnnf1", "cnnf2", "cnnf3", "cnnf4", "cnnf5"):
            assert f"{model}_{data}" in names and f"{model}_{data}_quick" in names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_builds(path):
    config = load_config(path)
    model = build_model(config)
    assert model.iterations == config.iterations
    if config.adversarial is not None:
        Adversary.from_config(model, config.adversarial)
    assert f"configs/{path.name}" in path.read_text()  # the header gives the command that runs it


@pytest.mark.parametrize("text, expected", [("1e-4", 1e-4), ("0.0001", 1e-4), ("3", 3.0)])
def test_learning_rate_override_in_any_float_notation(text, expected):
    """YAML 1.1 reads 1e-4 as a string; a float key takes it as the number it means."""
    config = load_config(CONFIGS[0], [f"lr={text}"])
    assert config.lr == expected and isinstance(config.lr, float | int)


@pytest.mark.parametrize("text, needle", [("fast", "lr must be float"), ("nan", "finite"), ("inf", "finite"), ("-1e-3", "> 0")])
def test_a_learning_rate_that_is_not_a_positive_number_is_refused(text, needle):
    with pytest.raises(ValueError, match=needle):
        load_config(CONFIGS[0], [f"lr={text}"])
