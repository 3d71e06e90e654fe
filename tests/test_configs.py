"""Every shipped config loads, type-checks and builds its model."""

from pathlib import Path

import pytest
import yaml

from cnnf.cli import main
from cnnf.config import load_config
from cnnf.steps import Adversary
from cnnf.train import build_model
from synthetic import make_cifar_dir, make_image_folder

CONFIGS_DIR = Path(__file__).parent.parent / "configs"
CONFIGS = sorted(CONFIGS_DIR.glob("*.yaml"))


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


def _train_briefly(config: str, data_dir: Path, out: Path) -> None:
    """`cnnf train` with a shipped config for one step on one image, validated on another."""
    args = ["train", "--config", str(CONFIGS_DIR / config), "--out", str(out), "--set", "epochs=1",
            "--set", f"data_dir={data_dir}", "--set", "val_size=1", "--set", "train_subset=1",
            "--set", "batch_size=1", "--set", "eval_batch_size=1", "--set", "threads=1"]
    assert main(args) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["model"] == load_config(CONFIGS_DIR / config).model
    assert (out / "model.pt").is_file()


def test_wrn_config_trains_on_generated_cifar(tmp_path):
    """The WRN-40-2 config (adversarial PGD-7, N = 2) runs on generated CIFAR-10 batches."""
    make_cifar_dir(tmp_path / "cifar", counts=(1, 1, 1, 1, 1, 1))
    _train_briefly("cnnf_wrn40_2_cifar10.yaml", tmp_path / "cifar", tmp_path / "run")


@pytest.mark.slow
def test_vgg16_config_trains_on_a_generated_image_folder(tmp_path):
    """The VGG-16 config (224 x 224 inputs, N = 1 down to the pixels) runs on generated images."""
    for split in ("train", "val"):
        make_image_folder(tmp_path / "images", {"cat": [(300, 260)], "dog": [(256, 256)]}, split)
    _train_briefly("cnnf_vgg16_imagenet.yaml", tmp_path / "images", tmp_path / "run")
