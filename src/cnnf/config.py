"""Training configuration: one dataclass, read from YAML, overridden with `key=value`."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from cnnf.device import check_device_name
from cnnf.precision import check_precision
from cnnf.records import allowed_types, from_plain
from cnnf.scoring import OUTPUTS


LR_SCHEDULES = ("constant", "cosine")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and the fix."""


@dataclass
class TrainConfig:
    """Everything a training run depends on. Defaults are the paper's (appendix B.1)."""

    model: str = "paper_mnist"          # registered architecture (cnnf list-models)
    iterations: int = 5                 # N feedback iterations while training (0 = CNN)
    reconstruct_to: int | None = None   # layer k (None: the architecture's default)
    output: str = "last"                # scored logits: "last" | "average"
    residual: float = 1.0               # r in h <- h + r (g - h); 1 is the paper
    relu_mixing: float = 0.0            # the released code's AdaReLU, f <- f + m (g - f) before
                                        # the mask (it uses 0.1); 0 is the paper
    dataset: str = "fashion-mnist"      # one of cnnf.data.DATASETS: fashion-mnist, mnist, cifar10, imagefolder
    data_dir: str | None = None         # None: cnnf.data.default_data_dir (none for cifar10, imagefolder)
    val_size: int = 5000                # validation images carved from the training set
    train_subset: int | None = None     # use only the first n shuffled training images
    epochs: int = 30
    batch_size: int = 128               # the paper is silent; 128 is the released code's default
    lr: float = 1e-3                    # Adam; the peak learning rate
    lr_schedule: str = "constant"       # "constant" (the paper names none) | "cosine": decay
                                        # per step from lr to 0 over all epochs
    weight_decay: float = 5e-4
    alpha_ce: float = 1.0
    alpha_rec: float = 0.1
    alpha_cll: float = 0.0
    alpha_norm: float = 0.0
    seed: int = 0
    threads: int | None = None          # torch.set_num_threads; None: torch's default
    device: str = "auto"                # auto (CUDA where available) | cpu | cuda | cuda:N
    precision: str = "fp32"             # fp32 | bf16: autocast to bfloat16 (weights, optimiser
                                        # and losses stay float32; cnnf.precision)
    checkpoint_every: int = 100         # steps between checkpoints (and one per epoch)
    eval_batch_size: int = 500
    tensorboard: bool = False
    adversarial: dict | None = None     # adversarial training (see cnnf.steps), None: off
    init_from: str | None = None        # start from these weights (fine-tuning): a shipped
                                        # model's name, a run folder or a checkpoint file

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        hints = typing.get_type_hints(cls)
        values = {key: _float_from_exponent(value, hints[key]) if key in hints else value for key, value in values.items()}
        config = from_plain(cls, values, "config", ConfigError)
        config.validate()
        return config

    def validate(self) -> None:
        positive = ("epochs", "batch_size", "val_size", "checkpoint_every", "eval_batch_size")
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.iterations < 0:
            raise ConfigError(f"iterations must be >= 0, got {self.iterations}")
        if not (0 < self.lr < math.inf):
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr}")
        if self.output not in OUTPUTS:
            raise ConfigError(f"output must be one of {', '.join(OUTPUTS)}, got {self.output!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not 0 < self.residual <= 1:
            raise ConfigError(f"residual must be in (0, 1], got {self.residual}")
        try:
            check_device_name(self.device)
            check_precision(self.precision)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if not 0 <= self.relu_mixing < 1:
            raise ConfigError(f"relu_mixing must be in [0, 1) (0 is the paper's AdaReLU), got {self.relu_mixing}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def learning_rate(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of global step `step` (0-based) under `config.lr_schedule`."""
    if config.lr_schedule == "constant":
        return config.lr
    progress = step / (config.epochs * steps_per_epoch)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def load_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML config and apply `key=value` overrides (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; see configs/ for the shipped ones")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of key: value, got {type(values).__name__}")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like key=value")
        values[key.strip()] = yaml.safe_load(raw)
    return TrainConfig.from_dict(values)


def save_config(config: TrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def _float_from_exponent(value: object, hint: object) -> object:
    """YAML 1.1 reads `1e-4` (no dot) as a string; read it as the float it means."""
    if float in allowed_types(hint) and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value
