"""The `cnnf` command: train, test, evaluate, plot, export, list models, neural predictivity,
reproduce the paper's figures, viz and report (`cnnf.viz.commands`).
Bad input exits with code 2 and one line.

Every argument is checked while the command line is parsed (argparse `type=` converters that
reuse the library's own checks), before any model, data set or progress file is read.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import torch
import yaml

from cnnf import checkpoint, distributed, neuro
from cnnf.accuracy import trajectory_statistics
from cnnf.attacks import TARGETS, parse_attacks
from cnnf.attacks.threat import check_eps
from cnnf.config import ConfigError, load_config
from cnnf.data import DATASETS, DataError, load_dataset
from cnnf.device import check_device_name, device_of, resolve_device
from cnnf.evaluate import Sweep, format_table, run_sweep
from cnnf.fast.allocator import keep_freed_memory
from cnnf.model_card import export_pretrained
from cnnf.plot import plot_results
from cnnf.reproduce.command import figures_named, run_reproduce
from cnnf.reproduce.experiments import EXPERIMENTS
from cnnf.reproduce.profiles import PROFILES
from cnnf.precision import PRECISIONS, check_precision
from cnnf.scoring import OUTPUTS
from cnnf.train import RunFolderError, train
from cnnf.zoo import list_models

T = TypeVar("T")


class UsageError(ValueError):
    """A malformed command line; the message names the argument and the fix."""


USER_ERRORS = (ConfigError, DataError, checkpoint.CheckpointError, RunFolderError, ValueError, OSError)


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv); the exit code: 0, 2 after one error
    line for bad input, 130 when interrupted."""
    try:
        args = _parser().parse_args(argv)
        keep_freed_memory()  # faster CPU steps in a fresh process; see cnnf.fast.allocator
        return args.handler(args)
    except USER_ERRORS as error:
        print(f"cnnf: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cnnf: interrupted; resume training with `cnnf train --resume RUN_DIR`, "
              "a robustness sweep by running the same `cnnf evaluate` command again", file=sys.stderr)
        return 130
    finally:
        distributed.stop()


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise UsageError (one line in `main`) instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cnnf", description="CNN-F: CNNs with recurrent generative feedback")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    p = commands.add_parser("train", help="train a model from a config (or resume a run)")
    p.add_argument("--config", type=Path, help="YAML config, e.g. configs/cnnf5_fmnist_quick.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable)")
    p.add_argument("--out", type=Path, help="run folder (default: runs/CONFIG_NAME)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR where it stopped")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    _add_device(p, "default: the config's device")
    _add_precision(p, None, "default: the config's; a new run saves it in its config")
    p.set_defaults(handler=_train)

    p = commands.add_parser("test", help="clean test accuracy after every iteration count 0..N")
    _add_model_source(p)
    p.add_argument("--iterations", type=_count(0), help="evaluate 0..N iterations (default: the model's N)")
    p.add_argument("--dataset", choices=DATASETS, help="default: the one the model was trained on")
    p.add_argument("--data-dir", type=_folder, help="folder holding the data set files")
    _add_device(p, "default: auto")
    _add_precision(p, "fp32")
    p.set_defaults(handler=_test)

    p = commands.add_parser("evaluate", help="robustness sweep: attacks x targets x eps, scored per iteration count")
    _add_model_source(p)
    p.add_argument("--attacks", type=_from_library(parse_attacks), default="fgsm,pgd40",
                   help="comma list: fgsm, pgd7, pgd20, pgd40, spsa, autoattack (or pgd<N>)")
    p.add_argument("--targets", type=_comma_list(_target, "first,e2e"), default="first,e2e",
                   help="gradient sources: first, cnn, e2e")
    p.add_argument("--eps", type=_comma_list(_from_library(_eps), "0,0.1,0.3"), default="0,0.05,0.1,0.15,0.2,0.25,0.3",
                   help="comma list, [0, 1] image units")
    p.add_argument("--iterations", type=_comma_list(_count(0), "0,1,5"),
                   help="comma list of iteration counts to score (default 0..N)")
    p.add_argument("--subset", type=_count(1), help="first n test images (default: all)")
    p.add_argument("--seeds", type=_count(1), default=1, help="attack seeds (random starts); mean and std over them")
    p.add_argument("--cnn", type=_from_library(_model_source), help="run folder or checkpoint of a CNN for --targets cnn")
    p.add_argument("--batch-size", type=_count(1), default=250)
    p.add_argument("--merge", dest="pieces", action="append", type=_file, default=[], metavar="PROGRESS_FILE",
                   help="take finished runs from the progress file of a piece of this sweep run elsewhere "
                        "(the same command with other --eps or --targets and another --out); repeatable")
    p.add_argument("--keep-progress", action="store_true",
                   help="keep OUT.progress.pt when the sweep completes, to --merge it into a larger sweep")
    p.add_argument("--no-early-stop", action="store_true",
                   help="run every PGD step on every image (default: e2e PGD keeps each image's first misclassified iterate)")
    p.add_argument("--dataset", choices=DATASETS, help="default: the dataset the model was trained on")
    p.add_argument("--data-dir", type=_folder)
    p.add_argument("--out", type=_new_file, help="results JSON (default: results/NAME.json); a plot is written beside it")
    _add_device(p, "default: auto")
    _add_precision(p, "fp32")
    p.set_defaults(handler=_evaluate)

    p = commands.add_parser("plot", help="accuracy vs eps from one or more results files")
    p.add_argument("results", nargs="+", type=_file)
    p.add_argument("--out", type=_image_file, required=True, help="image file, e.g. results/fig6.png")
    p.add_argument("--output", default="last", choices=OUTPUTS)
    p.set_defaults(handler=_plot)

    p = commands.add_parser("export", help="ship a finished run as a pretrained model with a model card")
    p.add_argument("run_dir", type=_folder)
    p.add_argument("--name", type=_model_name, required=True, help="pretrained name, e.g. cnnf5_fmnist")
    p.add_argument("--command", type=_text, required=True, help="the exact command that trained the run (for the card)")
    p.add_argument("--note", type=_text, help="why the training departs from the paper's, where it does (for the card)")
    p.set_defaults(handler=_export)

    p = commands.add_parser("neural-predictivity", help="PLS neural predictivity of layers at every iteration (Brain-Score)")
    _add_model_source(p)
    p.add_argument("--recordings", type=_file, required=True, metavar="FILE.npz",
                   help="stimuli and responses (format: docs/DESIGN.md, Neural predictivity)")
    p.add_argument("--layers", type=_comma_list(_from_library(neuro.check_layer_name), "block1,block2"),
                   help="comma list of blockB (block B's output) or layer indices (default: every block below the logits)")
    p.add_argument("--iterations", type=_count(0), help="score steps t = 0..N (default: the model's N)")
    p.add_argument("--cnn", type=_from_library(_model_source), help="also score this CNN (t = 0) side by side")
    p.add_argument("--components", type=_count(1), default=25, help="PLS components")
    p.add_argument("--splits", type=_count(1), default=10, help="random 90/10 splits of the images")
    p.add_argument("--seed", type=_count(0), default=0)
    p.add_argument("--out", type=_new_file, required=True, help="results JSON")
    _add_device(p, "default: auto")
    p.set_defaults(handler=_neural_predictivity)

    p = commands.add_parser("reproduce", help="train, evaluate and draw a figure of the paper (docs/RESULTS.md)")
    p.add_argument("figure", type=_from_library(figures_named), metavar="FIGURE",
                   help=f"{', '.join(EXPERIMENTS)} or all")
    p.add_argument("--profile", choices=PROFILES, default="cpu", help="budget: quick (minutes), cpu (hours), paper")
    p.add_argument("--seeds", type=_count(1), help="training seeds 0..N-1 (default: the profile's)")
    p.add_argument("--out", type=Path, help="output folder (default: results/reproduce/PROFILE)")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--plot-only", action="store_true", help="redraw the figure from its JSON record")
    shown.add_argument("--table", action="store_true", help="print the figure's markdown tables from its JSON record")
    _add_device(p, "default: auto")
    p.set_defaults(handler=run_reproduce)

    p = commands.add_parser("list-models", help="registered architectures and shipped pretrained weights")
    p.set_defaults(handler=_list_models)

    from cnnf.viz.commands import add_commands  # cnnf.viz.commands reuses this module's converters

    add_commands(commands)
    return parser


def _add_device(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--device", type=_from_library(check_device_name), help=f"auto, cpu, cuda or cuda:N ({default})")


def _add_precision(p: argparse.ArgumentParser, default: str | None, note: str = "default: %(default)s") -> None:
    p.add_argument("--precision", type=_from_library(check_precision), default=default,
                   help=f"{' or '.join(PRECISIONS)}: bf16 runs the model under bfloat16 autocast ({note})")


def _add_model_source(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("run_dir", nargs="?", type=_from_library(_model_source),
                        help="a run folder (uses its model.pt), a checkpoint file or a shipped model's name")
    source.add_argument("--pretrained", metavar="NAME", type=_from_library(_pretrained),
                        help="a shipped model (cnnf list-models)")


def _train(args: argparse.Namespace) -> int:
    if args.resume is not None:
        if args.config is not None or args.overrides or args.precision:
            raise ConfigError("--resume continues a run with its saved config (precision included); "
                              "drop --config, --set and --precision")
        path = train(args.resume, resume=True, device=args.device)
    else:
        if args.config is None:
            raise ConfigError("give --config CONFIG.yaml to start a run, or --resume RUN_DIR to continue one")
        precision = [f"precision={args.precision}"] if args.precision else []
        config = load_config(args.config, args.overrides + precision)
        run_dir = args.out or Path("runs") / args.config.stem
        path = train(run_dir, config, overwrite=args.overwrite, device=args.device)
    if distributed.is_main():
        print(f"final model: {path}")
    return 0


def load_model_source(args: argparse.Namespace, device: torch.device):
    """(model on `device`, saved training config) from a run folder or a pretrained name."""
    path = checkpoint.pretrained_path(args.pretrained) if args.pretrained else checkpoint.source_path(args.run_dir)
    return load_model_file(path, device)


def load_model_file(path: Path, device: torch.device):
    """(model on `device`, saved training config) from a checkpoint file."""
    state = checkpoint.read(path)
    return checkpoint.model_from_state(state, path).to(device), state.get("config", {})


def _data_source(args: argparse.Namespace, config: dict) -> tuple[str, Path | str | None]:
    """(dataset, data dir): the arguments, else the training config's; its data dir only for its own dataset."""
    trained_on = config.get("dataset", "fashion-mnist")
    dataset = args.dataset or trained_on
    return dataset, args.data_dir or (config.get("data_dir") if dataset == trained_on else None)


def _test(args: argparse.Namespace) -> int:
    model, config = load_model_source(args, distributed.start(args.device or "auto"))
    dataset, data_dir = _data_source(args, config)
    iterations = model.iterations if args.iterations is None else args.iterations
    test_set = load_dataset(dataset, data_dir)["test"]
    stats = trajectory_statistics(model, test_set, iterations, precision=args.precision)
    if not distributed.is_main():
        return 0
    print(f"clean test accuracy on {dataset} ({len(test_set)} images), model trained with N = {model.iterations}; "
          "ce: cross entropy of step t; |g|/|h|, cos: the reconstruction that feeds step t against the clean features")
    print(f"{'iterations':>10}" + "".join(f"  {mode:>7}" for mode in OUTPUTS) + f"  {'ce':>6}  {'|g|/|h|':>7}  {'cos':>5}")
    for t in range(iterations + 1):
        feedback = (f"  {stats['g_norm_ratio'][t - 1]:7.3f}  {stats['g_cosine'][t - 1]:5.3f}" if t else "")
        print(f"{t:>10}" + "".join(f"  {100 * stats[mode][t]:6.2f}%" for mode in OUTPUTS) + f"  {stats['ce'][t]:6.3f}"
              + feedback)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    if "cnn" in args.targets and args.cnn is None:
        raise UsageError("--targets cnn transfers from a separately trained CNN: give it with --cnn RUN_DIR_OR_CHECKPOINT")
    model, config = load_model_source(args, distributed.start(args.device or "auto"))
    test_set = load_dataset(*_data_source(args, config))["test"]
    if args.subset is not None:
        test_set = test_set.subset(torch.arange(min(args.subset, len(test_set))))
    sweep = Sweep(
        attacks=args.attacks,
        targets=args.targets,
        eps=args.eps,
        iterations=args.iterations or list(range(model.iterations + 1)),
        seeds=list(range(args.seeds)),
        batch_size=args.batch_size,
        early_stop=not args.no_early_stop,
        precision=args.precision,
    )
    cnn = checkpoint.load_model(checkpoint.source_path(args.cnn)).to(device_of(model)) if args.cnn else None
    out = args.out or Path("results") / f"{args.pretrained or args.run_dir.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = (lambda line: print(line, file=sys.stderr, flush=True)) if distributed.is_main() else None
    result = run_sweep(model, test_set, sweep, cnn=cnn, progress=out.with_suffix(".progress.pt"), report=report,
                       pieces=tuple(args.pieces), keep_progress=args.keep_progress)
    if not distributed.is_main():
        return 0
    result.meta["model"] = args.pretrained or str(args.run_dir)
    out.write_text(json.dumps(result.to_plain(), indent=1))
    print(format_table(result))
    plot_results([out], out.with_suffix(".png"), output=model.output)
    print(f"results: {out}  plot: {out.with_suffix('.png')}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    print(f"wrote {plot_results(args.results, args.out, output=args.output)}")
    return 0


def _export(args: argparse.Namespace) -> int:
    print(f"wrote {export_pretrained(args.run_dir, args.name, args.command, note=args.note)}")
    return 0


def _neural_predictivity(args: argparse.Namespace) -> int:
    recordings = neuro.load_recordings(args.recordings)
    model, _ = load_model_source(args, resolve_device(args.device or "auto"))
    cnn = checkpoint.load_model(checkpoint.source_path(args.cnn), iterations=0).to(device_of(model)) if args.cnn else None
    options = dict(layers=args.layers, n_components=args.components, splits=args.splits, seed=args.seed)
    rows = [{"model": "cnn", **row} for row in (neuro.score_model(cnn, recordings, **options) if cnn else [])]
    rows += [{"model": "model", **row} for row in neuro.score_model(model, recordings, iterations=args.iterations, **options)]
    ceiling = neuro.ceilings(recordings, args.splits, args.seed)
    config = {"model": args.pretrained or str(args.run_dir), "cnn": args.cnn and str(args.cnn),
              "recordings": str(args.recordings), "images": len(recordings.responses),
              "iterations": model.iterations if args.iterations is None else args.iterations,
              "stratified": recordings.labels is not None, **options, "layers": list(dict.fromkeys(row["layer"] for row in rows))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": config, "ceiling": ceiling, "scores": rows}, indent=1))
    print(neuro.format_scores(rows, ceiling))
    print(f"results: {args.out}")
    return 0


def _list_models(args: argparse.Namespace) -> int:
    print("architectures (cnnf.create_model):")
    for name in list_models():
        print(f"  {name}")
    print("pretrained weights (cnnf.load_pretrained, --pretrained NAME):")
    for name in checkpoint.pretrained_names():
        card = yaml.safe_load((checkpoint.PRETRAINED_DIR / f"{name}.yaml").read_text())
        print(f"  {name}: {card['architecture']} N = {card['settings']['iterations']}, {card['data']['dataset']}, "
              f"{_training_summary(card)}, test accuracy {100 * card['test_accuracy']['last'][-1]:.2f}%")
    return 0


def _training_summary(card: dict) -> str:
    """E.g. "2 epochs from cnn_fmnist, adversarial fgsm eps 0.3"."""
    summary = f"{card['epochs']} epochs"
    if card["training_config"].get("init_from"):
        summary += f" from {card['training_config']['init_from']}"
    if card.get("adversarial_training"):
        summary += f", adversarial {card['adversarial_training']['attack']} eps {card['adversarial_training']['eps']}"
    return summary


# Argument converters: each returns the parsed value or raises ArgumentTypeError, which
# argparse reports as "argument --NAME: MESSAGE".


def _from_library(parse: Callable[[str], T]) -> Callable[[str], T]:
    """A converter from a library function that raises ValueError with a message for users."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def _count(minimum: int) -> Callable[[str], int]:
    """A converter to an integer >= minimum."""

    def count(text: str) -> int:
        if not re.fullmatch(r"\s*[+-]?\d+\s*", text) or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return int(text)

    return count


def _comma_list(item: Callable[[str], T], example: str) -> Callable[[str], list[T]]:
    """A converter of a comma list, e.g. `example`, item by item."""

    def comma_list(text: str) -> list[T]:
        items = [part.strip() for part in text.split(",") if part.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma list, e.g. {example}, got {text!r}")
        return [item(part) for part in items]

    return comma_list


def _eps(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected numbers in [0, 1] ([0, 1] image units, e.g. 0.1), got {text!r}") from None
    return check_eps(value)


def _target(text: str) -> str:
    if text not in TARGETS:
        raise argparse.ArgumentTypeError(f"unknown target {text!r}; choose from {', '.join(TARGETS)}")
    return text


def _model_source(text: str) -> Path:
    """A run folder, a checkpoint file or a shipped model's name (see `checkpoint.source_path`)."""
    checkpoint.source_path(text)
    return Path(text)


def _pretrained(name: str) -> str:
    checkpoint.pretrained_path(name)
    return name


def _file(text: str) -> Path:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no file {text}; check the path")
    return Path(text)


def _folder(text: str) -> Path:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"no folder {text}; check the path")
    return Path(text)


def _new_file(text: str) -> Path:
    """A file to write: not a folder."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name in it, e.g. {Path(text) / 'NAME.json'}")
    return Path(text)


def _image_file(text: str) -> Path:
    """A file to write a figure to, of a type matplotlib writes (e.g. .png, .pdf, .svg)."""
    from matplotlib.backend_bases import FigureCanvasBase

    kinds = FigureCanvasBase.get_supported_filetypes()
    if Path(text).suffix.lstrip(".").lower() not in kinds:
        endings = ", .".join(sorted(kinds))
        raise argparse.ArgumentTypeError(f"expected an image file ending in one of .{endings}, got {text!r}")
    return _new_file(text)


def _model_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", text):
        raise argparse.ArgumentTypeError(
            f"expected a name of letters, digits, '_', '.' and '-', e.g. cnnf5_fmnist, got {text!r}")
    return text


def _text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a non-empty text")
    return text


if __name__ == "__main__":

    sys.exit(main())
