"""A static HTML report of one or more models: model card, clean accuracy per iteration,
robustness plots from results files, and the three figure-9 views of what the feedback does.

Everything lands in one folder: index.html, the figures as PNG files it links relatively, and
the records they were drawn from (.npz, .json). No server and no external assets.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cnnf.accuracy import accuracy_per_iteration
from cnnf.data import ImageSet
from cnnf.model import CNNF
from cnnf.plot import plot_results
from cnnf.scoring import OUTPUTS
from cnnf.viz.cells import compute_cells
from cnnf.viz.common import Record, first, pyplot, save_figure
from cnnf.viz.corruptions import Corruptions
from cnnf.viz.figures import draw
from cnnf.viz.gradcam import compute_gradcam
from cnnf.viz.restoration import compute_restoration


@dataclass(frozen=True)
class Sizes:
    """How much each part of the report computes (test images are taken from the start of the set).

    accuracy: images for the clean accuracy per iteration. images: restoration's shown images;
    mean_over: images its mean distances average over. pool: Grad-CAM's images for accuracy and
    flips; show: images per corruption it draws maps for. cell_image, neighbours, grid: the
    decision-cell plane's image, neighbourhood and grid size.
    """

    accuracy: int = 1000
    images: list[int] = field(default_factory=lambda: [0, 1])
    mean_over: int = 500
    pool: int = 200
    show: int = 2
    cell_image: int = 0
    neighbours: int = 200
    grid: int = 25


@dataclass
class Entry:
    """One model of the report: its `name`, the model, its model card (a shipped model's NAME.yaml)
    or None, its training config, and the test images and data set name it is shown on."""

    name: str
    model: CNNF
    card: dict | None
    config: dict
    images: ImageSet
    dataset: str


def write_report(entries: list[Entry], out_dir: Path, results: list[Path], corruptions: Corruptions,
                 sizes: Sizes) -> Path:
    """Compute, draw and write the report to out_dir/index.html; returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = [_accuracy_section(entries, out_dir, sizes.accuracy)]
    if results:
        plot_results(results, out_dir / "robustness.png")
        names = ", ".join(html.escape(Path(f).name) for f in results)
        sections.append(f"<h2>Robustness</h2><p>From {names} (last output).</p>" + _image("robustness.png"))
    sections += [_model_section(entry, out_dir, corruptions, sizes) for entry in entries]
    page = out_dir / "index.html"
    title = "cnnf report: " + ", ".join(entry.name for entry in entries)
    page.write_text(PAGE.format(title=html.escape(title), body="\n".join(sections)))
    return page


def _accuracy_section(entries: list[Entry], out_dir: Path, n: int) -> str:
    """Clean accuracy after t = 0..N iterations of every model: saved to accuracy.json, drawn from it."""
    record = {}
    for entry in entries:
        images = first(entry.images, n)
        record[entry.name] = {**accuracy_per_iteration(entry.model, images, entry.model.iterations), "images": len(images)}
    (out_dir / "accuracy.json").write_text(json.dumps(record, indent=1))
    plot_accuracy(out_dir / "accuracy.json", out_dir / "accuracy.png")
    rows = [[name, mode, *(f"{100 * a:.1f}" for a in values[mode])] for name, values in record.items() for mode in OUTPUTS]
    width = max(len(row) for row in rows)
    header = ["model", "output", *(f"t={t}" for t in range(width - 2))]
    return ("<h2>Clean accuracy per iteration</h2>"
            f"<p>Accuracy (%) after t feedback iterations, on the first test images ({_counts(record)}).</p>"
            + _image("accuracy.png") + _table(header, rows))


def plot_accuracy(record_path: Path, out: Path) -> Path:
    """Accuracy after t iterations, one line per model and output mode, from accuracy.json."""
    record = json.loads(Path(record_path).read_text())
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for colour, (name, values) in enumerate(record.items()):
        for mode, style in zip(OUTPUTS, ("-", "--")):
            ax.plot([100 * a for a in values[mode]], style, marker="o", ms=3, color=f"C{colour}", label=f"{name}, {mode}")
    ax.set_xlabel("feedback iterations t")
    ax.set_ylabel("clean accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out, dpi=100)


def _model_section(entry: Entry, out_dir: Path, corruptions: Corruptions, sizes: Sizes) -> str:
    """The model's card and its three figures, each with the numbers behind it."""
    model, name = entry.model, entry.name

    def draw_here(record: Record, figure: str) -> dict:
        record.meta["model"] = name
        draw(record, out_dir / name / figure)
        return record.meta

    parts = [f'<h2 id="{html.escape(name)}">{html.escape(name)}</h2>', _card(entry)]
    meta = draw_here(compute_gradcam(model, entry.images, entry.dataset, sizes.pool, sizes.show, corruptions), "gradcam.png")
    parts.append("<h3>Grad-CAM over iterations (figure 9b, 9c)</h3>" + _image(f"{name}/gradcam.png") + _gradcam_table(meta))
    if model.reconstruct_to != 0 or model.iterations == 0:
        why = (f"reconstructs to layer {model.reconstruct_to}" if model.iterations else "runs no feedback iterations (N = 0)")
        parts.append(f"<p>Restoration and decision cells need feedback that generates images; {html.escape(name)} "
                     f"{why}, so they are left out.</p>")
        return "\n".join(parts)
    meta = draw_here(compute_restoration(model, entry.images, entry.dataset, sizes.images, sizes.mean_over, corruptions),
                     "restoration.png")
    parts.append("<h3>Restoration (figure 9d)</h3>" + _image(f"{name}/restoration.png") + _restoration_table(meta))
    meta = draw_here(compute_cells(model, entry.images, entry.dataset, sizes.cell_image, sizes.neighbours, sizes.grid),
                     "cells.png")
    parts.append("<h3>Decision cells (figure 9a)</h3>" + _image(f"{name}/cells.png")
                 + f"<p>{100 * meta['toward_image']:.0f} % of the feedback arrows point toward the image; mean arrow "
                   f"length {meta['mean_move']:.2f} (pixel L2, [-1, 1] units). The image's class covers "
                   f"{100 * meta['own_class'][0]:.0f} % of the plane after 0 iterations and {100 * meta['own_class'][1]:.0f} % "
                   f"after {meta['iterations']}. {100 * meta['clipped_fraction']:.0f} % of the plane's pixels were clipped "
                   "to [-1, 1].</p>")
    return "\n".join(parts)


def _card(entry: Entry) -> str:
    """A summary table of the model and, folded, its full model card (or its training config)."""
    model, card = entry.model, entry.card
    rows = [["architecture", entry.config.get("model", "?")], ["data", entry.dataset],
            ["iterations N", model.iterations], ["reconstructs to layer k", model.reconstruct_to],
            ["output", model.output], ["residual r", model.residual]]
    if card:
        rows += [["epochs", card["epochs"]],
                 ["departures from the paper's training", "; ".join(card["deviations"]) or "none"],
                 ["test accuracy (card, full test set)",
                  ", ".join(f"t={t}: {100 * a:.2f} %" for t, a in enumerate(card["test_accuracy"]["last"]))]]
    full = yaml.safe_dump(card or entry.config, sort_keys=False)
    label = "model card" if card else "training config (no model card: not a shipped model)"
    return (_table(None, rows) + f"<details><summary>{label}</summary><pre>{html.escape(full)}</pre></details>")


def _gradcam_table(meta: dict) -> str:
    n = meta["iterations"]
    rows = [[meta["descriptions"][kind], *(f"{100 * a:.1f}" for a in meta["accuracy"][kind]),
             meta["flips"][kind]["wrong_to_right"], meta["flips"][kind]["right_to_wrong"]] for kind in meta["kinds"]]
    return (f"<p>Accuracy (%) after t iterations on the first {meta['pool']} test images, and the images whose "
            f"prediction turns wrong→right or right→wrong between t = 0 and t = {n}.</p>"
            + _table(["corruption", *(f"t={t}" for t in range(n + 1)), "wrong→right", "right→wrong"], rows))


def _restoration_table(meta: dict) -> str:
    n = meta["iterations"]
    rows = [[meta["descriptions"][kind], *(f"{d:.3f}" for d in meta["mean_distance"][kind])] for kind in meta["kinds"]]
    return (f"<p>Mean RMS distance to the clean image ([0, 1] units) over the first {meta['mean_over']} test images: "
            "of the input, and of the image the feedback generates at each iteration. Feedback restores where "
            "a g column is below the input column; the clean row is the floor.</p>"
            + _table(["corruption", "input", *(f"g_{t}" for t in range(n))], rows))


def _counts(record: dict) -> str:
    return ", ".join(f"{name}: {values['images']} images" for name, values in record.items())


def _image(src: str) -> str:
    return f'<p><img src="{html.escape(src)}" alt="{html.escape(src)}"></p>'


def _table(header: list | None, rows: list[list]) -> str:
    """An HTML table of `rows`, under a `header` row unless None."""
    head = "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; max-width: 1000px; margin: 1.5em auto; padding: 0 1em; color: #222; }}
h1 {{ font-size: 1.5em; }} h2 {{ border-bottom: 1px solid #ccc; margin-top: 1.6em; }}
img {{ max-width: 100%; height: auto; }}
table {{ border-collapse: collapse; margin: 0.5em 0; font-size: 0.85em; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: left; }}
pre {{ background: #f6f6f6; padding: 0.5em; overflow-x: auto; font-size: 0.8em; }}
</style></head>
<body><h1>{title}</h1>
<p>What the feedback does (figure 9 of Huang et al., NeurIPS 2020), drawn from the records beside this page.</p>
{body}
</body></html>
"""
