"""`cnnf viz restoration | gradcam | cells | plot` and `cnnf report`: the command line of cnnf.viz.

Arguments are checked while parsing with the converters of `cnnf.cli` (one-line errors, exit
code 2); each figure command writes FIGURE.png and its record FIGURE.npz beside it.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import yaml

from cnnf import checkpoint, cli
from cnnf.data import DATASETS, load_dataset
from cnnf.device import resolve_device
from cnnf.viz.cells import compute_cells
from cnnf.viz.common import Record
from cnnf.viz.corruptions import KINDS, Corruptions
from cnnf.viz.figures import draw, redraw
from cnnf.viz.gradcam import compute_gradcam
from cnnf.viz.report import Entry, Sizes, write_report
from cnnf.viz.restoration import compute_restoration

DEFAULTS = Corruptions()


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `viz` (with its figures) and `report` to the `cnnf` command's subcommands."""
    p = commands.add_parser("viz", help="what the feedback does: figure 9's restoration, Grad-CAM, decision cells")
    figures = p.add_subparsers(required=True, metavar="FIGURE")

    f = figures.add_parser("restoration", help="figure 9d: corrupted images and the images the feedback generates (k = 0)")
    _add_figure_arguments(f)
    f.add_argument("--images", type=cli._comma_list(cli._count(0), "0,1"), default=[0, 1], help="test images to show")
    f.add_argument("--mean-over", type=cli._count(1), default=500, help="first n test images the mean distances average over")
    _add_corruptions(f)
    f.set_defaults(handler=_restoration)

    f = figures.add_parser("gradcam", help="figures 9b, 9c: Grad-CAM at every iteration on clean and corrupted images")
    _add_figure_arguments(f)
    f.add_argument("--pool", type=cli._count(1), default=200, help="first n test images: accuracy and flips")
    f.add_argument("--show", type=cli._count(1), default=2, help="images per corruption to draw (flips first)")
    _add_corruptions(f)
    f.set_defaults(handler=_gradcam)

    f = figures.add_parser("cells", help="figure 9a: decision cells on a plane through a test image, feedback arrows (k = 0)")
    _add_figure_arguments(f)
    f.add_argument("--image", type=cli._count(0), default=0, help="the test image at the plane's centre")
    f.add_argument("--neighbours", type=cli._count(2), default=200, help="nearest test images whose PCA spans the plane")
    f.add_argument("--grid", type=cli._count(2), default=25, help="grid points per side")
    f.add_argument("--extent", type=_positive, default=2.0, help="half width, in standard deviations along d1")
    f.set_defaults(handler=_cells)

    f = figures.add_parser("plot", help="redraw a figure from its record (FIGURE.npz)")
    f.add_argument("record", type=cli._file, metavar="RECORD.npz")
    f.add_argument("--out", type=cli._image_file, required=True, help="image file, e.g. docs/figures/gradcam.png")
    f.set_defaults(handler=_plot)

    p = commands.add_parser("report", help="a static HTML page: model cards, accuracy per iteration, robustness, figure 9")
    p.add_argument("models", nargs="+", type=cli._from_library(cli._model_source), metavar="MODEL_OR_RUN",
                   help="shipped model names, run folders or checkpoint files")
    p.add_argument("--out", type=_out_folder, required=True, help="folder for index.html, its figures and records")
    p.add_argument("--results", nargs="+", type=cli._file, default=[], metavar="FILE",
                   help="results JSON files of `cnnf evaluate` to plot")
    p.add_argument("--accuracy-images", type=cli._count(1), default=Sizes.accuracy, help="first n test images for accuracy")
    p.add_argument("--images", type=cli._comma_list(cli._count(0), "0,1"), default=[0, 1], help="restoration's images")
    p.add_argument("--mean-over", type=cli._count(1), default=Sizes.mean_over, help="restoration's mean over n images")
    p.add_argument("--pool", type=cli._count(1), default=Sizes.pool, help="Grad-CAM's first n test images")
    p.add_argument("--show", type=cli._count(1), default=Sizes.show, help="Grad-CAM images per corruption")
    p.add_argument("--image", type=cli._count(0), default=Sizes.cell_image, help="decision cells' test image")
    p.add_argument("--neighbours", type=cli._count(2), default=Sizes.neighbours, help="decision cells' neighbourhood")
    p.add_argument("--grid", type=cli._count(2), default=Sizes.grid, help="decision cells' grid points per side")
    _add_corruptions(p)
    p.add_argument("--data-dir", type=cli._folder, help="folder holding the data set files (default: each model's)")
    cli._add_device(p, "default: auto")
    p.set_defaults(handler=_report)


def _add_figure_arguments(p: argparse.ArgumentParser) -> None:
    cli._add_model_source(p)
    p.add_argument("--out", type=cli._image_file, required=True,
                   help="figure file, e.g. docs/figures/NAME.png; its record is written beside it as NAME.npz")
    p.add_argument("--iterations", type=cli._count(0), help="feedback iterations N (default: the model's)")
    p.add_argument("--dataset", choices=DATASETS,
                   help="default: the one the model was trained on")
    p.add_argument("--data-dir", type=cli._folder, help="folder holding the data set files")
    cli._add_device(p, "default: auto")


def _add_corruptions(p: argparse.ArgumentParser) -> None:
    p.add_argument("--blur-sigma", type=_positive, default=DEFAULTS.blur_sigma, help="Gaussian blur std, pixels")
    p.add_argument("--noise-std", type=_positive, default=DEFAULTS.noise_std, help="Gaussian noise std, [0, 1] units")
    p.add_argument("--eps", type=cli._from_library(cli._eps), default=DEFAULTS.eps, help="PGD budget, [0, 1] units")
    p.add_argument("--pgd-steps", type=cli._count(1), default=DEFAULTS.pgd_steps, help="PGD steps")
    p.add_argument("--pgd-target", choices=("first", "e2e"), default=DEFAULTS.target,
                   help="PGD differentiates the first pass (the paper's transfer attack) or the iterations")
    p.add_argument("--seed", type=cli._count(0), default=DEFAULTS.seed, help="seeds the noise and PGD's random start")


def _corruptions(args: argparse.Namespace) -> Corruptions:
    return Corruptions(args.blur_sigma, args.noise_std, args.eps, args.pgd_steps, args.pgd_target, args.seed)


def _model_and_images(args: argparse.Namespace):
    """(model, test images, dataset name) of a figure command."""
    model, config = cli.load_model_source(args, resolve_device(args.device or "auto"))
    dataset, data_dir = cli._data_source(args, config)
    return model, load_dataset(dataset, data_dir)["test"], dataset


def _draw(record: Record, args: argparse.Namespace) -> None:
    """Name the model in the record, save it beside --out and draw it there."""
    record.meta["model"] = args.pretrained or str(args.run_dir)
    draw(record, args.out)


def _restoration(args: argparse.Namespace) -> int:
    model, images, dataset = _model_and_images(args)
    record = compute_restoration(model, images, dataset, args.images, args.mean_over, _corruptions(args), args.iterations)
    _draw(record, args)
    print(f"mean RMS distance to the clean image over {record.meta['mean_over']} images ([0, 1] units), "
          "input then g_0 .. g_{N-1}:")
    for kind in KINDS:
        print(f"  {kind:>5}: " + " ".join(f"{d:.3f}" for d in record.meta["mean_distance"][kind]))
    print(f"wrote {args.out} (record {args.out.with_suffix('.npz')})")
    return 0


def _gradcam(args: argparse.Namespace) -> int:
    model, images, dataset = _model_and_images(args)
    record = compute_gradcam(model, images, dataset, args.pool, args.show, _corruptions(args), args.iterations)
    _draw(record, args)
    print(f"first {record.meta['pool']} test images: accuracy (%) after t = 0..N iterations; flips between 0 and N:")
    for kind in KINDS:
        flips = record.meta["flips"][kind]
        print(f"  {kind:>5}: " + " ".join(f"{100 * a:.1f}" for a in record.meta["accuracy"][kind])
              + f"; {flips['wrong_to_right']} wrong->right, {flips['right_to_wrong']} right->wrong")
    print(f"wrote {args.out} (record {args.out.with_suffix('.npz')})")
    return 0


def _cells(args: argparse.Namespace) -> int:
    model, images, dataset = _model_and_images(args)
    record = compute_cells(model, images, dataset, args.image, args.neighbours, args.grid, args.extent, args.iterations)
    _draw(record, args)
    meta = record.meta
    print(f"{100 * meta['toward_image']:.1f} % of the feedback moves point toward the image; "
          f"mean move {meta['mean_move']:.3f} (pixel L2, [-1, 1] units); the image's class covers "
          f"{100 * meta['own_class'][0]:.1f} % of the plane after 0 iterations, {100 * meta['own_class'][1]:.1f} % after N")
    print(f"wrote {args.out} (record {args.out.with_suffix('.npz')})")
    return 0


def _plot(args: argparse.Namespace) -> int:
    print(f"wrote {redraw(args.record, args.out)}")
    return 0


def _report(args: argparse.Namespace) -> int:
    corruptions = _corruptions(args)
    entries = [_entry(source, args) for source in args.models]
    sizes = Sizes(args.accuracy_images, args.images, args.mean_over, args.pool, args.show, args.image,
                  args.neighbours, args.grid)
    print(f"wrote {write_report(entries, args.out, args.results, corruptions, sizes)}")
    return 0


def _entry(source: Path, args: argparse.Namespace) -> Entry:
    """A model of the report with its card (shipped models only) and its data set's test images."""
    path = checkpoint.source_path(source)
    model, config = cli.load_model_file(path, resolve_device(args.device or "auto"))
    card_file = path.with_suffix(".yaml")
    card = yaml.safe_load(card_file.read_text()) if path.parent == checkpoint.PRETRAINED_DIR and card_file.is_file() else None
    dataset = config.get("dataset", "fashion-mnist")
    images = load_dataset(dataset, args.data_dir or config.get("data_dir"))["test"]
    name = path.parent.name if path.name == "model.pt" else path.stem
    return Entry(name, model, card, config, images, dataset)


def _positive(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _out_folder(text: str) -> Path:
    """A folder to write into: not an existing file."""
    if Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder for the report, e.g. reports/NAME")
    return Path(text)
