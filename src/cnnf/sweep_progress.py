"""Resumable robustness sweeps: every finished attack run is saved at once, so a sweep that is
interrupted (Ctrl-C, a killed job, the end of a session) continues where it stopped.

The file (`NAME.progress.pt` beside the results) holds a fingerprint of what is being measured
(model weights and settings, images, sweep settings); per finished run (a `RunKey`: seed,
attack, target, eps), the per-image robust flags at every `Scoring` (iterations, output mode)
and the seconds it took; and the finished batches of the run in progress, so a long run
(AutoAttack on a 5-iteration model takes hours) resumes mid-way. It is written atomically
after every batch and read with torch.load(weights_only=True).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnf.checkpoint import save_atomic
from cnnf.scoring import Scoring

Flags = dict[Scoring, torch.Tensor]
"""Per scoring: a bool per image, True where the prediction is correct."""


@dataclass(frozen=True, order=True)
class RunKey:
    """One attack run of a sweep: `attack` from gradient source `target` at budget `eps`, `seed`."""

    seed: int
    attack: str
    target: str
    eps: float

    @property
    def name(self) -> str:
        """The run's key in a progress file, e.g. "0|pgd40|e2e|0.1"."""
        return f"{self.seed}|{self.attack}|{self.target}|{self.eps!r}"


@dataclass(frozen=True)
class AttackRun:
    """A finished attack run: its flags over all images and the seconds it took."""

    flags: Flags
    seconds: float


class SweepProgressError(ValueError):
    """A progress file that belongs to another sweep or cannot be read."""


class SweepProgress:
    """Finished attack runs of one sweep and the finished batches of the run in progress;
    `path` None keeps nothing (no resuming). With `writes` False the file is read but never
    written or deleted (the processes of a sweep other than the main one)."""

    def __init__(self, path: Path | None, fingerprint: str, writes: bool = True):
        self.path = path
        self.fingerprint = fingerprint
        self.writes = writes
        self.runs: dict[str, dict] = {}
        self.in_progress: dict | None = None  # {"run", "batches": {index: flags}, "seconds"}
        self.resumed: list[str] = []  # runs read back from the file
        if path is not None and path.exists():
            state = _load(path, fingerprint, "delete it to start afresh, or rerun the command that made it")
            self.runs = state["runs"]
            self.in_progress = state.get("in_progress")
            self.resumed = list(self.runs)

    def get(self, key: RunKey) -> AttackRun | None:
        """Run `key` if it is finished, else None."""
        run = self.runs.get(key.name)
        if run is None:
            return None
        return AttackRun(_unpack(run["flags"]), run["seconds"])

    def partial(self, key: RunKey) -> tuple[dict[int, Flags], float]:
        """The finished batches {index: flags} of run `key` and their seconds ({}, 0 if none)."""
        if self.in_progress is None or self.in_progress["run"] != key.name:
            return {}, 0.0
        batches = {int(i): _unpack(flags) for i, flags in self.in_progress["batches"].items()}
        return batches, self.in_progress["seconds"]

    def put_batch(self, key: RunKey, index: int, flags: Flags, seconds: float) -> None:
        """Batch `index` of run `key` is done; `seconds` so far for the run."""
        if self.in_progress is None or self.in_progress["run"] != key.name:
            self.in_progress = {"run": key.name, "batches": {}, "seconds": 0.0}
        self.in_progress["batches"][str(index)] = _pack(flags)
        self.in_progress["seconds"] = seconds
        self._save()

    def put(self, key: RunKey, run: AttackRun) -> None:
        """Run `key` is complete."""
        self.runs[key.name] = {"flags": _pack(run.flags), "seconds": run.seconds}
        self.in_progress = None
        self._save()

    def absorb(self, path: Path) -> None:
        """Take the finished runs of another progress file of the same sweep (a piece of it run
        in parallel, e.g. with other --eps); runs already here are kept."""
        hint = "only pieces of the same sweep (same model, images, attacks, iterations, batch size) can be merged"
        state = _load(path, self.fingerprint, hint)
        taken = [name for name in state["runs"] if name not in self.runs]
        self.runs.update({name: state["runs"][name] for name in taken})
        if self.in_progress is not None and self.in_progress["run"] in self.runs:
            self.in_progress = None
        self.resumed += taken
        self._save()

    def _save(self) -> None:
        if self.path is not None and self.writes:
            state = {"fingerprint": self.fingerprint, "runs": self.runs, "in_progress": self.in_progress}
            save_atomic(state, self.path)

    def finish(self) -> None:
        """The sweep is complete and its results are written: the progress file goes."""
        if self.path is not None and self.writes:
            self.path.unlink(missing_ok=True)


def fingerprint(models: list[torch.nn.Module], images: torch.Tensor, labels: torch.Tensor, settings: dict) -> str:
    """sha256 over the models' weights, the images and labels, and the sweep `settings`."""
    digest = hashlib.sha256(repr(sorted(settings.items())).encode())
    weights = [t for model in models for t in model.state_dict().values()]
    for tensor in [*weights, images, labels]:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _load(path: Path, fingerprint: str, hint: str) -> dict:
    """The state saved in `path`, checked to belong to the sweep `fingerprint` (else `hint`)."""
    if not path.is_file():
        raise SweepProgressError(f"no progress file {path} (a sweep writes OUT.progress.pt until it completes)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise SweepProgressError(f"{path} is corrupt ({type(error).__name__}); delete it to start the sweep afresh") from None
    if not isinstance(state, dict) or "runs" not in state:
        raise SweepProgressError(f"{path} is not a sweep progress file; delete it to start the sweep afresh")
    if state.get("fingerprint") != fingerprint:
        raise SweepProgressError(f"{path} holds the progress of a different sweep (other model, images or settings); {hint}")
    return state


def _pack(flags: Flags) -> dict[str, torch.Tensor]:
    return {str(scoring): f for scoring, f in flags.items()}


def _unpack(packed: dict[str, torch.Tensor]) -> Flags:
    return {Scoring.parse(name): f for name, f in packed.items()}
