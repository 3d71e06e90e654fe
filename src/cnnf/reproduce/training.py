"""Training the models of a figure: one run folder per model and training seed,
OUT/models/NAME-seedS/. A finished run with the same config is kept, an interrupted one
resumed (`train(..., resume=True)`), a missing one trained; a run folder holding another
config is an error (nothing is overwritten).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from cnnf.config import TrainConfig, load_config
from cnnf.reproduce.experiments import CONFIG_DIR, MODELS, ModelSpec
from cnnf.reproduce.profiles import ADVERSARIAL, STANDARD, Profile
from cnnf.train import train

Report = Callable[[str], None]


class ReproduceError(ValueError):
    """Something `cnnf reproduce` cannot do as asked; the message names it and the fix."""


def run_dir(out: Path, model: str, seed: int) -> Path:
    """The run folder of `model` trained with `seed` under the output folder `out`."""
    return Path(out) / "models" / f"{model}-seed{seed}"


def model_config(name: str, profile: Profile, seed: int, out: Path) -> TrainConfig:
    """The full training config of model `name`, seed `seed`, under `profile`."""
    spec = MODELS[name]
    path = CONFIG_DIR / spec.config
    if not path.is_file():
        raise ReproduceError(f"base config {path} of model {name} not found; run from a checkout of the repository")
    base = load_config(path).to_dict()
    kind = model_kind(base)
    values = {**base, **spec.overrides, **profile.config_overrides(kind), "seed": seed}
    if kind == ADVERSARIAL:
        values["adversarial"] = {**base["adversarial"], "attack": profile.attack(base["adversarial"]["attack"])}
        if profile.finetune_adversarial and spec.finetune_from:
            values["init_from"] = str(run_dir(out, spec.finetune_from, seed))
    return TrainConfig.from_dict(values)


def model_kind(config: dict) -> str:
    """ADVERSARIAL for a config with adversarial training, else STANDARD."""
    return ADVERSARIAL if config.get("adversarial") else STANDARD


def ensure_trained(name: str, seed: int, profile: Profile, out: Path, device: str | None, report: Report) -> Path:
    """The run folder of model `name`, seed `seed`, trained to the end (module docstring);
    a fine-tune's starting model is trained first."""
    config = model_config(name, profile, seed, out)
    spec: ModelSpec = MODELS[name]
    if config.init_from is not None and spec.finetune_from is not None:
        ensure_trained(spec.finetune_from, seed, profile, out, device, report)
    folder = run_dir(out, name, seed)
    state = _run_state(folder, config)
    if state == "finished":
        return folder
    report(f"{'resuming' if state == 'partial' else 'training'} {name} seed {seed} in {folder}")
    start = time.perf_counter()
    if state == "partial":
        train(folder, resume=True, device=device)
    else:
        train(folder, config, overwrite=True, device=device)
    _add_seconds(folder, time.perf_counter() - start)
    return folder


def train_seconds(folder: Path) -> float:
    """Seconds this package spent training the run in `folder` (0 if unrecorded)."""
    path = folder / "timing.json"
    return json.loads(path.read_text())["train_seconds"] if path.is_file() else 0.0


def _run_state(folder: Path, config: TrainConfig) -> str:
    """"finished", "partial" (resume it) or "new" (nothing of a run there) for `config`."""
    saved_path = folder / "config.yaml"
    if not saved_path.is_file():
        return "new"
    saved = load_config(saved_path).to_dict()
    differing = sorted(key for key, value in config.to_dict().items() if saved.get(key) != value)
    if differing:
        raise ReproduceError(f"{folder} holds a run with another config (differs in {', '.join(differing)}); "
                             "delete that folder or choose another --out")
    return "finished" if (folder / "model.pt").is_file() else "partial"


def _add_seconds(folder: Path, seconds: float) -> None:
    (folder / "timing.json").write_text(json.dumps({"train_seconds": train_seconds(folder) + seconds}))
