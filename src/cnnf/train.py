"""Training: one run folder per run, atomic checkpoints, exact resume after a kill.

Run folder:
    config.yaml      the resolved config
    metrics.jsonl    one JSON line per epoch: loss terms, train / validation accuracy, images/s
    checkpoint.pt    model, optimizer, RNG state, epoch and step (written atomically)
    model.pt         the final model (written at the end)

In a group of processes (`torchrun ... -m cnnf train`, `cnnf.distributed`), every process takes
its share of each batch of the epoch's order (`ImageSet.batches(part=...)`; the batch size is the
global one), the gradients are summed over processes, and only the main process writes the
run folder; docs/SCALING.md says what then stays bit-identical.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from cnnf import checkpoint, distributed
from cnnf.accuracy import DIAGNOSTICS, trajectory_statistics
from cnnf.config import ConfigError, TrainConfig, learning_rate, load_config, save_config
from cnnf.data import ImageSet, load_dataset, train_val_split
from cnnf.device import device_of
from cnnf.losses import LossWeights
from cnnf.model import CNNF
from cnnf.precision import autocast
from cnnf.records import RecordError, from_plain, read_json_lines
from cnnf.scoring import OUTPUTS
from cnnf.steps import Adversary, StepResult, make_step
from cnnf.zoo import create_model

TERMS = ("total", "ce", "rec", "cll", "norm")


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (exists, or has nothing to resume)."""


@dataclass
class Totals:
    """Sums over the steps of the epoch so far: the loss terms (TERMS) weighted by batch size,
    correct predictions on clean and on adversarial images, images seen, seconds in steps."""

    total: float = 0.0
    ce: float = 0.0
    rec: float = 0.0
    cll: float = 0.0
    norm: float = 0.0
    correct: int = 0
    correct_adv: int = 0
    seen: int = 0
    seconds: float = 0.0

    def add(self, result, images: int, seconds: float) -> None:
        """Count one training step's `result` on `images` images that took `seconds`."""
        for name in TERMS:
            setattr(self, name, getattr(self, name) + result.terms[name] * images)
        self.correct += result.correct or 0
        self.correct_adv += result.correct_adv or 0
        self.seen += images
        self.seconds += seconds

    def mean(self, name: str) -> float:
        """A sum per image seen: a loss term's mean, or an accuracy ("correct", "correct_adv")."""
        return getattr(self, name) / max(self.seen, 1)

    @property
    def train_accuracy(self) -> float:
        """Accuracy on clean images, or on adversarial ones where a step scores no clean ones."""
        return self.mean("correct" if self.correct else "correct_adv")

    @property
    def images_per_s(self) -> float:
        return self.seen / max(self.seconds, 1e-9)


@dataclass
class Position:
    """Where a run stands: the epoch in progress (0-based), the steps done in it, the steps of
    the finished epochs (global_step) and the epoch's totals. Checkpoints hold it as plain data
    (`to_plain`), since they are read with torch.load(weights_only=True)."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    totals: Totals = field(default_factory=Totals)

    def next_epoch(self) -> Position:
        """The position at the start of the next epoch."""
        return Position(epoch=self.epoch + 1, global_step=self.global_step + self.step)

    def to_plain(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_plain(cls, saved: object, source: str) -> Position:
        return from_plain(cls, saved, f"{source}: position", checkpoint.CheckpointError)


def adam(parameters, lr: float, weight_decay: float) -> torch.optim.Adam:
    """The paper's optimiser, Adam with L2 weight decay, as one fused kernel per step: the same
    update as torch's default (foreach) form, in a third of its time on CPU (about 3 ms instead of 11
    for conv4_mnist's 3.3 M parameters; benchmarks/README.md)."""
    return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay, fused=True)


def build_model(config: TrainConfig) -> CNNF:
    settings = {"iterations": config.iterations, "output": config.output, "residual": config.residual,
                "relu_mixing": config.relu_mixing}
    if config.reconstruct_to is not None:
        settings["reconstruct_to"] = config.reconstruct_to
    return create_model(config.model, **settings)


def load_splits(config: TrainConfig) -> tuple[ImageSet, ImageSet]:
    """(train, validation) from the training set; the test set is never touched here."""
    train, val = train_val_split(load_dataset(config.dataset, config.data_dir)["train"], config.val_size, config.seed)
    if config.train_subset is not None:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed))
        train = train.subset(order[: config.train_subset])
    return train, val


def saved_config(run_dir: Path) -> TrainConfig:
    """The config of the run in `run_dir`, to resume it."""
    if not (run_dir / "config.yaml").is_file():
        raise RunFolderError(f"{run_dir} has no config.yaml to resume; start a new run with --config")
    return load_config(run_dir / "config.yaml")


def create_run_folder(run_dir: Path, config: TrainConfig, overwrite: bool) -> None:
    """Create a run folder holding `config`; never overwrite one unless asked. Every process
    checks, then the main process writes."""
    exists = run_dir.exists() and any(run_dir.iterdir())
    if exists and not overwrite:
        raise RunFolderError(f"run folder {run_dir} already exists; use --resume to continue it or --overwrite to replace it")
    distributed.barrier()  # every process has looked at the folder before the main one changes it
    if distributed.is_main():
        if exists:
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    distributed.barrier()


def train(run_dir: str | Path, config: TrainConfig | None = None, resume: bool = False, overwrite: bool = False,
          device: str | None = None) -> Path:
    """Train (or resume) the run in `run_dir`; returns the path of the final model. `device`
    overrides the config's (a resumed run may continue on another machine). Started by torchrun
    with several processes, it trains with all of them (`cnnf.distributed`)."""
    run_dir = Path(run_dir)
    config = saved_config(run_dir) if resume else config
    if config is None:
        raise ConfigError("give --config to start a run, or --resume RUN_DIR to continue one")
    if config.tensorboard:
        _summary_writer_class()  # fail before the run folder is created
    device = distributed.start(device or config.device)  # one-line errors before the run folder is created
    initial = None if resume else _initial_weights(config)
    train_set, val_set = load_splits(config)
    _check_shares(len(train_set), config.batch_size, distributed.world_size())
    if not resume:
        create_run_folder(run_dir, config, overwrite)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model = build_model(config).to(device)
    if initial is not None:
        checkpoint.load_into(model, initial, config.init_from)
    optimizer = adam(model.parameters(), config.lr, config.weight_decay)
    weights = LossWeights(config.alpha_ce, config.alpha_rec, config.alpha_cll, config.alpha_norm)
    step_fn = make_step(model, optimizer, weights, config.adversarial, config.precision)
    position = _restore(run_dir, config, model, optimizer) if resume else _new_position(config)
    distributed.broadcast_parameters(model)
    writer = _summary_writer_class()(str(run_dir / "tensorboard")) if config.tensorboard and distributed.is_main() else None
    while position.epoch < config.epochs:
        _train_epoch(run_dir, config, model, optimizer, step_fn, train_set, position)
        record = _finish_epoch(config, model, val_set, position)
        if distributed.is_main():
            _append_metrics(run_dir, record)
        _log(writer, record)
        position = position.next_epoch()
        _save_training_state(run_dir, config, model, optimizer, position)
    final = run_dir / "model.pt"
    if distributed.is_main():
        checkpoint.save_atomic({**checkpoint.model_state(model.eval()), "config": config.to_dict()}, final)
    distributed.barrier()  # the final model is there when any process returns
    return final


def _check_shares(images: int, batch_size: int, processes: int) -> None:
    """Every process must get images in every step: no batch may be smaller than the group."""
    smallest = min(batch_size, images % batch_size or batch_size)
    if smallest < processes:
        raise ConfigError(f"{processes} processes, but a batch of the epoch holds only {smallest} images "
                          f"({images} training images, batch_size {batch_size}); change batch_size or "
                          f"train_subset, or use at most {smallest} processes")


def _initial_weights(config: TrainConfig) -> dict | None:
    """The checkpoint named by `config.init_from`, read and checked against the configured
    architecture before the run folder is made (None: start from a fresh initialisation)."""
    if config.init_from is None:
        return None
    path = checkpoint.source_path(config.init_from)
    state = checkpoint.read(path)
    checkpoint.load_into(build_model(config), state, path)
    return state


def _train_epoch(run_dir: Path, config: TrainConfig, model: CNNF, optimizer, step_fn, train_set: ImageSet,
                 position: Position) -> None:
    """The rest of the epoch at `position`, which it advances step by step (this process's
    share of each batch; the totals count the whole batches)."""
    totals = position.totals
    order = torch.Generator().manual_seed(config.seed * 100_003 + position.epoch)
    shares = train_set.batches(config.batch_size, shuffle=True, generator=order, part=distributed.part())
    batches = itertools.islice(shares, position.step, None)
    n_batches = -(-len(train_set) // config.batch_size)
    bar = tqdm(total=n_batches, initial=position.step, desc=f"epoch {position.epoch + 1}/{config.epochs}",
               disable=not (sys.stderr.isatty() and distributed.is_main()), leave=False)
    model.train()
    device = device_of(model)
    for x, y in batches:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, position.global_step + position.step, n_batches)
        images = min(config.batch_size, len(train_set) - position.step * config.batch_size)  # in the whole batch
        start = time.perf_counter()
        result = step_fn(x.to(device), y.to(device), len(y) / images)
        totals.add(*_whole_batch(result, len(y)), time.perf_counter() - start)
        position.step += 1
        bar.update()
        bar.set_postfix(loss=f"{totals.mean('total'):.3f}", acc=f"{totals.train_accuracy:.3f}",
                        ips=f"{totals.images_per_s:.0f}")
        if position.step % config.checkpoint_every == 0:
            _save_training_state(run_dir, config, model, optimizer, position)
        if bar.disable and distributed.is_main() and position.step % 50 == 0:
            print(f"epoch {position.epoch + 1} step {position.step}/{n_batches} loss {totals.mean('total'):.4f} "
                  f"acc {totals.train_accuracy:.4f} {totals.images_per_s:.0f} img/s", flush=True)
    bar.close()


def _whole_batch(result: StepResult, images: int) -> tuple[StepResult, int]:
    """The step's result on the whole batch from this process's share of `images` images: the
    loss terms averaged over all processes' images, the counts summed (one process: as it is)."""
    if distributed.world_size() == 1:
        return result, images
    sums = distributed.sum_values([result.terms[name] * images for name in TERMS]
                                  + [result.correct or 0, result.correct_adv or 0, images])
    total = int(sums[-1])
    terms = {name: value / total for name, value in zip(TERMS, sums)}
    return StepResult(terms, int(sums[-3]), int(sums[-2])), total


def _finish_epoch(config: TrainConfig, model: CNNF, val_set: ImageSet, position: Position) -> dict:
    """The epoch's metrics record (a line of metrics.jsonl), also printed."""
    model.eval()
    val = trajectory_statistics(model, val_set, config.iterations, config.eval_batch_size, config.precision)
    totals = position.totals
    record = {"epoch": position.epoch + 1, "step": position.global_step + position.step}
    record.update({f"loss_{name}": totals.mean(name) for name in TERMS})
    record.update(train_acc=totals.mean("correct"), images_per_s=totals.images_per_s)
    record.update(val_acc=val[config.output][-1], **{f"val_acc_{mode}": val[mode] for mode in OUTPUTS})
    record.update({f"val_{name}": val[name] for name in DIAGNOSTICS if name in val})
    if config.adversarial is not None:
        record.update(train_acc=None if config.adversarial["mode"] == "conventional" else record["train_acc"],
                      train_adv_acc=totals.mean("correct_adv"), val_adv_acc=_adversarial_accuracy(config, model, val_set))
    accuracies = " ".join(f"{key.replace('_', ' ')} {record[key]:.4f}" for key in
                          ("train_acc", "train_adv_acc", "val_acc", "val_adv_acc") if record.get(key) is not None)
    if distributed.is_main():
        print(f"epoch {record['epoch']}/{config.epochs}: loss {record['loss_total']:.4f} {accuracies} "
              f"({record['images_per_s']:.0f} img/s)", flush=True)
    return record


def _adversarial_accuracy(config: TrainConfig, model: CNNF, val_set: ImageSet) -> float:
    """Accuracy of the scored output on the training attack's images, first 1000 validation images
    (in a group of processes, each attacks every world_size-th batch)."""
    adversary = Adversary.from_config(model, config.adversarial, config.precision)
    subset = val_set.subset(torch.arange(min(1000, len(val_set))))
    correct = 0
    rank, processes = distributed.part()
    for x, y in itertools.islice(subset.batches(config.eval_batch_size), rank, None, processes):
        x, y = x.to(device_of(model)), y.to(device_of(model))
        x_adv = adversary(x, y)
        with torch.inference_mode(), autocast(config.precision, x.device):
            correct += int((model(x_adv).argmax(1) == y).sum())
    (correct,) = distributed.sum_values([correct])
    return correct / len(subset)


def _save_training_state(run_dir: Path, config: TrainConfig, model: CNNF, optimizer, position: Position) -> None:
    """checkpoint.pt, written by the main process; in a group it also holds every process's RNG
    state ("rng_processes"; "rng" is the main one's)."""
    rng = distributed.all_gather(torch.get_rng_state())
    if not distributed.is_main():
        return
    state = {
        **checkpoint.model_state(model),
        "optimizer": optimizer.state_dict(),
        "rng": rng[0],
        "position": position.to_plain(),
        "config": config.to_dict(),
    }
    if len(rng) > 1:
        state["rng_processes"] = rng
    checkpoint.save_atomic(state, run_dir / "checkpoint.pt")


def _new_position(config: TrainConfig) -> Position:
    """The position of a new run, with each process's RNG set (`_process_rng`)."""
    _process_rng(config, None, Position())
    return Position()


def _restore(run_dir: Path, config: TrainConfig, model: CNNF, optimizer) -> Position:
    """Load checkpoint.pt into model and optimizer; drop metrics of epochs it has not finished."""
    path = run_dir / "checkpoint.pt"
    if not path.is_file():
        _say(f"{run_dir}: no checkpoint yet, starting from the beginning")
        return _new_position(config)
    state = checkpoint.read(path)
    position = Position.from_plain(state.get("position"), str(path))
    checkpoint.load_into(model, state, path)
    optimizer.load_state_dict(state["optimizer"])
    _process_rng(config, state.get("rng_processes", [state["rng"]]), position)
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file() and distributed.is_main():
        kept = [record for record in read_metrics(run_dir) if record["epoch"] <= position.epoch]
        metrics.write_text("".join(json.dumps(record) + "\n" for record in kept))
    _say(f"resuming {run_dir} at epoch {position.epoch + 1}, step {position.step}")
    return position


def _process_rng(config: TrainConfig, saved: list[torch.Tensor] | None, position: Position) -> None:
    """Set this process's RNG (the random starts of attacks in adversarial training): its saved
    state where the run was saved with as many processes; otherwise the main process continues
    the main stream (`saved[0]`, or the seed's in a new run) and every other one starts its own,
    seeded by its rank and the step."""
    rank, processes = distributed.part()
    if saved is not None and len(saved) == processes:
        torch.set_rng_state(saved[rank])
        return
    if saved is not None:
        torch.set_rng_state(saved[0])
    if rank > 0:
        torch.manual_seed((config.seed * 1_000_003 + position.global_step + position.step) * 1_009 + rank)


def _say(line: str) -> None:
    """Print `line` from the main process."""
    if distributed.is_main():
        print(line, flush=True)


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of run_dir/metrics.jsonl, one per finished epoch, checked to be JSON objects
    with an epoch number; a malformed file raises a RecordError that names it."""
    path = Path(run_dir) / "metrics.jsonl"
    records = read_json_lines(path, "metrics file")
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise RecordError(f"metrics file {path}: record {number} is not a JSON object with an integer epoch")
    return records


def _append_metrics(run_dir: Path, record: dict) -> None:
    with open(run_dir / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")


def _summary_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("tensorboard: true needs the tensorboard package; pip install tensorboard") from None
    return SummaryWriter


def _log(writer, record: dict) -> None:
    if writer is None:
        return
    for key, value in record.items():
        if isinstance(value, float):
            writer.add_scalar(key, value, record["epoch"])
    writer.flush()
