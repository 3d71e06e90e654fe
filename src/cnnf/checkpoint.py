"""Checkpoints: written atomically, read with `weights_only=True`, checked before use.

A checkpoint is a plain dict: {"format", "spec", "settings", "model"} plus, for training
state, {"optimizer", "rng", "position", "config"} (position: a `cnnf.train.Position` as plain data).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from cnnf.architecture import describe
from cnnf.model import CNNF

FORMAT = 1
PRETRAINED_DIR = Path(__file__).parent / "pretrained"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


def save_atomic(state: dict, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates files readable by the owner only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def model_state(model: CNNF) -> dict:
    """The part of a checkpoint that rebuilds the model."""
    return {"format": FORMAT, "spec": model.spec, "settings": model.settings(), "model": model.state_dict()}


def read(path: str | Path) -> dict:
    """Load a checkpoint dict safely, or raise CheckpointError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(error).__name__}); "
            "resume from the run folder's last good checkpoint or train again"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise CheckpointError(f"{path} is not a cnnf checkpoint (format {FORMAT}); save models with cnnf.checkpoint")
    return state


def load_into(model: CNNF, state: dict, source: str | Path) -> CNNF:
    """Load `state` into `model`, refusing a checkpoint of another architecture."""
    if state["spec"] != model.spec:
        raise CheckpointError(
            f"{source} holds another architecture ({_describe(state['spec'])}) than the model "
            f"({_describe(model.spec)}); build the model from the checkpoint with cnnf.checkpoint.load_model"
        )
    model.load_state_dict(state["model"])
    return model


def load_model(path: str | Path, **overrides) -> CNNF:
    """Rebuild a model from a checkpoint; `overrides` change settings such as iterations."""
    return model_from_state(read(path), path, **overrides)


def model_from_state(state: dict, source: str | Path, **overrides) -> CNNF:
    """Rebuild a model (in eval mode) from a checkpoint dict already read from `source`."""
    model = CNNF(state["spec"], **{**state["settings"], **overrides})
    return load_into(model, state, source).eval()


def pretrained_names() -> list[str]:
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.pt"))


def pretrained_path(name: str) -> Path:
    """The weights file of a shipped model, or CheckpointError listing the shipped ones."""
    path = PRETRAINED_DIR / f"{name}.pt"
    if not path.is_file():
        raise CheckpointError(f"no pretrained model {name!r}; available: {', '.join(pretrained_names()) or 'none'}")
    return path


def source_path(source: str | Path) -> Path:
    """A checkpoint named by a shipped model's name, a run folder (its model.pt) or a file path."""
    path = Path(source)
    if path.is_dir():
        return path / "model.pt"
    if path.is_file():
        return path
    if (PRETRAINED_DIR / f"{source}.pt").is_file():
        return PRETRAINED_DIR / f"{source}.pt"
    raise CheckpointError(f"{source} is neither a run folder, a checkpoint file nor a shipped model "
                          f"({', '.join(pretrained_names()) or 'none shipped'}); check the path or the name")


def load_pretrained(name: str, **overrides) -> CNNF:
    """A model trained by us and shipped with the package (see its model card, NAME.yaml)."""
    return load_model(pretrained_path(name), **overrides)


def _describe(spec: dict) -> str:
    return " | ".join(" ".join(map(describe, block)) for block in spec["blocks"])
