"""Resumable robustness sweeps: every finished attack run is saved at once, so a sweep that is
interrupted (Ctrl-C, a killed job, the end of a session) continues where it stopped.

The file (`NAME.progress.pt` beside the results) holds a fingerprint of what is being measured
(model weights and settings, images, sweep settings) and, per finished run (seed, attack,
target, eps), the per-image robust flags at every (iterations, output mode) and the seconds it
took. It is written atomically and read with torch.load(weights_only=True).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from cnnf.checkpoint import save_atomic

Flags = dict[tuple[int, str], torch.Tensor]
RunKey = tuple[int, str, str, float]  # (seed, attack, target, eps)


class SweepProgressError(ValueError):
    """A progress file that belongs to another sweep or cannot be read."""


class SweepProgress:
    """Finished attack runs of one sweep; `path` None keeps nothing (no resuming)."""

    def __init__(self, path: Path | None, fingerprint: str):
        self.path = path
        self.fingerprint = fingerprint
        self.runs: dict[str, dict] = {}
        self.resumed: list[str] = []  # runs read back from the file
        if path is not None and path.exists():
            state = _load(path)
            if state.get("fingerprint") != fingerprint:
                raise SweepProgressError(
                    f"{path} holds the progress of a different sweep (other model, images or settings); "
                    "delete it to start afresh, or rerun the command that made it"
                )
            self.runs = state["runs"]
            self.resumed = list(self.runs)

    def get(self, key: RunKey) -> tuple[Flags, float] | None:
        run = self.runs.get(_name(key))
        if run is None:
            return None
        flags = {(int(t), mode): f for t_mode, f in run["flags"].items() for t, mode in [t_mode.split("/")]}
        return flags, run["seconds"]

    def put(self, key: RunKey, flags: Flags, seconds: float) -> None:
        self.runs[_name(key)] = {"flags": {f"{t}/{mode}": f for (t, mode), f in flags.items()}, "seconds": seconds}
        if self.path is not None:
            save_atomic({"fingerprint": self.fingerprint, "runs": self.runs}, self.path)

    def finish(self) -> None:
        """The sweep is complete and its results are written: the progress file goes."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def fingerprint(models: list[torch.nn.Module], images: torch.Tensor, labels: torch.Tensor, settings: dict) -> str:
    """sha256 over the models' weights, the images and labels, and the sweep `settings`."""
    digest = hashlib.sha256(repr(sorted(settings.items())).encode())
    weights = [t for model in models for t in model.state_dict().values()]
    for tensor in [*weights, images, labels]:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _load(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise SweepProgressError(f"{path} is corrupt ({type(error).__name__}); delete it to start the sweep afresh") from None
    if not isinstance(state, dict) or "runs" not in state:
        raise SweepProgressError(f"{path} is not a sweep progress file; delete it to start the sweep afresh")
    return state


def _name(key: RunKey) -> str:
    seed, attack, target, eps = key
    return f"{seed}|{attack}|{target}|{eps!r}"
