"""Restoration (figure 9d): does the generative feedback move a corrupted image toward the clean one?

For a model whose feedback generates images (k = 0), the feedback pass of step t generates
g_t (B, C, H, W) from (y_t, z_t) (Algorithm 1, docs/DESIGN.md section 3). For each corruption
x~ of a clean image x the record holds the frames x~ = h_0, g_0, ..., g_{N-1} and the distance
of each to x, d the root-mean-square pixel distance in [0, 1] units. Frame j is what step j
classifies (h_j = g_{j-1} for the paper's r = 1). Feedback restores where d(g_t, x) < d(x~, x).
The clean row (x~ = x) gives the floor: how far the feedback's image of a clean input is from it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cnnf.data import ImageSet
from cnnf.model import CNNF
from cnnf.scoring import scores_per_step
from cnnf.viz.common import (Record, check_pixel_feedback, class_names, display, first, on_model, pick, pyplot,
                             rms_distance, save_figure)
from cnnf.viz.corruptions import KINDS, Corruptions

KIND = "restoration"


@torch.no_grad()
def frames_and_predictions(model: CNNF, x: Tensor, iterations: int) -> tuple[Tensor, Tensor]:
    """For inputs x (B, C, H, W) in [-1, 1]: the frames (B, 1 + N, C, H, W), x and g_0 .. g_{N-1},
    and the scored class after t = 0..N iterations (B, N + 1), in the model's output mode."""
    run = model.infer(x, iterations=iterations)
    predictions = scores_per_step(run.logits, model.output).argmax(-1).T
    return torch.stack([x, *run.reconstructions], 1), predictions


def distances(frames: Tensor, clean: Tensor) -> Tensor:
    """(B, F): RMS distance in [0, 1] units of every frame (B, F, C, H, W) to the clean x (B, C, H, W)."""
    return rms_distance(frames.flatten(0, 1), clean.unsqueeze(1).expand_as(frames).flatten(0, 1)).view(frames.shape[:2])


def compute_restoration(model: CNNF, images: ImageSet, dataset: str, shown: list[int], mean_over: int,
                        corruptions: Corruptions, iterations: int | None = None, batch_size: int = 500) -> Record:
    """The record of figure 9d. For each kind in KINDS: the shown test images' frames and their
    distances to the clean image and predictions; over the first `mean_over` test images, the
    mean distance per frame and the accuracy after t = 0..N iterations."""
    check_pixel_feedback(model, KIND)
    n = model.iterations if iterations is None else iterations
    if n < 1:
        raise ValueError(f"restoration needs at least one feedback iteration, got iterations = {n}")
    x, y = on_model(model, *pick(images, shown))
    arrays = {"index": np.array(shown), "labels": y.cpu().numpy(), "clean": x.cpu().numpy()}
    pool = first(images, mean_over)
    for kind in KINDS:
        frames, predictions = frames_and_predictions(model, corruptions.apply(kind, model, x, y), n)
        arrays |= {f"{kind}.frames": frames.cpu().numpy(), f"{kind}.predictions": predictions.cpu().numpy(),
                   f"{kind}.distance": distances(frames, x).cpu().numpy()}
        distance_sum, correct_sum, generator = torch.zeros(n + 1), torch.zeros(n + 1), corruptions.generator()
        for xb, yb in pool.batches(batch_size):
            xb, yb = on_model(model, xb, yb)
            frames, predictions = frames_and_predictions(model, corruptions.apply(kind, model, xb, yb, generator), n)
            distance_sum += distances(frames, xb).sum(0).cpu()
            correct_sum += (predictions == yb[:, None]).sum(0).cpu()
        arrays[f"{kind}.mean_distance"] = (distance_sum / len(pool)).numpy()
        arrays[f"{kind}.accuracy"] = (correct_sum / len(pool)).numpy()
    meta = {"dataset": dataset, "class_names": class_names(dataset, model.num_classes), "iterations": n,
            "output": model.output, "mean_over": len(pool), "kinds": list(KINDS),
            "descriptions": {kind: corruptions.describe(kind) for kind in KINDS},
            "mean_distance": {kind: arrays[f"{kind}.mean_distance"].tolist() for kind in KINDS},
            "accuracy": {kind: arrays[f"{kind}.accuracy"].tolist() for kind in KINDS}}
    return Record(KIND, meta, arrays)


def plot_restoration(record_path: Path, out: Path) -> Path:
    """Draw a restoration record: per shown image, one row per kind (clean, corrupted input,
    g_0 .. g_{N-1}, each with its distance to the clean image and its predicted class), and the
    mean distance per frame over `mean_over` images below."""
    record = Record.load(record_path, KIND)
    meta, arrays = record.meta, record.arrays
    kinds, n, names = meta["kinds"], meta["iterations"], meta["class_names"]
    rows = [(i, kind) for i in range(len(arrays["index"])) for kind in kinds]
    plt = pyplot()
    cols = 2 + n
    height = 1.2 * len(rows) + 2.6
    fig = plt.figure(figsize=(1.05 * cols + 0.6, height))
    outer = fig.add_gridspec(2, 1, height_ratios=[len(rows), 1.9], hspace=0.6 / len(rows) + 0.05,
                             left=0.1, right=0.98, top=1 - 0.25 / height, bottom=0.5 / height)
    grid = outer[0].subgridspec(len(rows), cols, hspace=0.6, wspace=0.08)
    for r, (i, kind) in enumerate(rows):
        label = int(arrays["labels"][i])
        frames = [arrays["clean"][i], *arrays[f"{kind}.frames"][i]]
        for c, frame in enumerate(frames):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(display(frame), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(("clean", "input")[c] if c < 2 else f"$g_{c - 2}$", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"#{arrays['index'][i]} {kind}", fontsize=7)
                ax.set_xlabel(names[label], fontsize=6)
                continue
            predicted = int(arrays[f"{kind}.predictions"][i, c - 1])
            ax.set_xlabel(f"d {arrays[f'{kind}.distance'][i, c - 1]:.3f}\n{names[predicted]}", fontsize=6,
                          color="tab:green" if predicted == label else "tab:red")
    ax = fig.add_subplot(outer[1])
    steps = np.arange(n + 1)
    for kind in kinds:
        ax.plot(steps, arrays[f"{kind}.mean_distance"], marker="o", ms=3, label=meta["descriptions"][kind])
    ax.set_xticks(steps, ["input"] + [f"$g_{t}$" for t in range(n)])
    ax.set_ylabel("RMS distance to clean", fontsize=7)
    ax.set_title(f"mean over {meta['mean_over']} test images ([0, 1] units; green / red: predicted class right / wrong)",
                 fontsize=7)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    return save_figure(fig, out)
