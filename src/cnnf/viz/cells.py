"""Decision cells (figure 9a): the classes on a plane of images through a held-out image, and
where one feedback iteration moves each point of the plane.

The plane. The paper takes "the image's two largest principal components"; we read that as the
two leading principal directions of the image's neighbourhood: PCA of the `neighbours` test
images nearest to x0 in pixel distance (x0 itself left out), centred on their mean. d1, d2
(unit vectors in R^{C x H x W}) are the directions along which images like x0 vary most, so the
plane crosses the cells of the classes next to x0's. A grid point is x(a, b) = x0 + a d1 + b d2,
for a, b in [-extent s1, extent s1] (s1: the neighbourhood's standard deviation along d1),
clipped to the image range [-1, 1] before the model sees it.

The arrows. For a model whose feedback generates images (k = 0), one feedback iteration moves
the input h_0 = x to h_1 = h_0 + r (g_0 - h_0); the arrow at (a, b) is that move projected on
the plane, (<h_1 - h_0, d1>, <h_1 - h_0, d2>), in the plane's units.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cnnf.data import ImageSet
from cnnf.inputs import check_count
from cnnf.model import CNNF
from cnnf.scoring import score
from cnnf.viz.common import Record, check_pixel_feedback, class_names, on_model, pick, pyplot, save_figure

KIND = "cells"


def principal_plane(x0: Tensor, pool: Tensor, neighbours: int) -> tuple[Tensor, Tensor, Tensor]:
    """The plane's directions (2, C, H, W), orthonormal, the standard deviations along them (2,),
    and the positions of the chosen neighbours in `pool` (neighbours,), from x0 (C, H, W) and
    pool images (P, C, H, W) (x0 and exact copies of it are left out of the neighbourhood)."""
    distance = (pool - x0).flatten(1).norm(dim=1)
    distance[distance == 0] = float("inf")
    near = distance.argsort()[:neighbours]
    centred = pool[near].flatten(1) - pool[near].flatten(1).mean(0)
    _, singular, directions = torch.linalg.svd(centred, full_matrices=False)
    spread = singular[:2] / max(len(near) - 1, 1) ** 0.5
    return directions[:2].view(2, *x0.shape), spread, near


def coordinates(x: Tensor, origin: Tensor, directions: Tensor) -> Tensor:
    """(B, 2): coordinates of x (B, C, H, W) - origin on the orthonormal directions (2, C, H, W)."""
    return (x - origin).flatten(1) @ directions.flatten(1).T


@torch.no_grad()
def compute_cells(model: CNNF, images: ImageSet, dataset: str, index: int, neighbours: int = 200,
                  grid: int = 25, extent: float = 2.0, iterations: int | None = None, batch_size: int = 500) -> Record:
    """The record of figure 9a around test image `index`: on a grid x grid plane of images, the
    class after 0 and after N iterations (model's output mode), and the projected move of one
    feedback iteration at every point. Summary numbers in meta: `toward_image` (the fraction of
    moves that point toward the image) and `own_class` (the fraction of the plane given the
    image's label after 0 and after N iterations)."""
    check_pixel_feedback(model, "decision-cell")
    check_count(neighbours, "neighbours", minimum=2)
    check_count(grid, "grid", minimum=2)
    if not extent > 0:
        raise ValueError(f"extent must be > 0 (in standard deviations of the neighbourhood), got {extent!r}")
    n = model.iterations if iterations is None else iterations
    if n < 1:
        raise ValueError(f"decision cells need at least one feedback iteration, got iterations = {n}")
    x0, y0 = on_model(model, *pick(images, [index]))
    pool, pool_labels = on_model(model, *next(images.batches(len(images))))
    directions, spread, near = principal_plane(x0[0], pool, min(neighbours, len(images) - 1))
    axis = torch.linspace(-extent * spread[0].item(), extent * spread[0].item(), grid, device=x0.device)
    b, a = torch.meshgrid(axis, axis, indexing="ij")  # rows: b (vertical), columns: a (horizontal)
    plane = x0 + a.reshape(-1, 1, 1, 1) * directions[0] + b.reshape(-1, 1, 1, 1) * directions[1]
    points = plane.clamp(-1, 1)
    before, after, moves = [], [], []
    for chunk in points.split(batch_size):
        run = model.infer(chunk, iterations=n)
        before.append(run.logits[0].argmax(1))
        after.append(score(run.logits, model.output).argmax(1))
        moves.append(coordinates(run.features[1], run.features[0], directions))
    shape = (grid, grid)
    arrays = {"axis": axis.cpu().numpy(), "before": torch.cat(before).view(shape).cpu().numpy(),
              "after": torch.cat(after).view(shape).cpu().numpy(),
              "moves": torch.cat(moves).view(*shape, 2).cpu().numpy(),
              "image": x0[0].cpu().numpy(), "directions": directions.cpu().numpy(),
              "neighbours": coordinates(pool[near], x0[0], directions).cpu().numpy(),
              "neighbour_labels": pool_labels[near].cpu().numpy()}
    meta = {"dataset": dataset, "class_names": class_names(dataset, model.num_classes), "iterations": n,
            "output": model.output, "index": index, "label": int(y0[0]), "neighbours": len(near), "grid": grid,
            "extent": extent, "spread": spread.tolist(), "clipped_fraction": (plane.abs() > 1).float().mean().item(),
            "mean_move": float(np.linalg.norm(arrays["moves"], axis=-1).mean()),
            "toward_image": toward_origin(arrays["moves"], axis),
            "own_class": [float((arrays[key] == int(y0[0])).mean()) for key in ("before", "after")]}
    return Record(KIND, meta, arrays)


def toward_origin(moves: np.ndarray, axis: np.ndarray) -> float:
    """The fraction of grid points (origin excluded) whose move (G, G, 2) points toward the
    plane's origin, x0: <move, -(a, b)> > 0."""
    a, b = np.meshgrid(axis, axis)
    inward = -(moves[..., 0] * a + moves[..., 1] * b)
    away_from_origin = (a != 0) | (b != 0)
    return float((inward[away_from_origin] > 0).mean())


def plot_cells(record_path: Path, out: Path) -> Path:
    """Draw a decision-cell record: the plane coloured by the class after 0 iterations with the
    arrows of the first feedback iteration, the plane coloured by the class after N, and the
    two directions as images."""
    record = Record.load(record_path, KIND)
    meta, arrays = record.meta, record.arrays
    names, axis = meta["class_names"], arrays["axis"]
    plt = pyplot()
    colours = plt.get_cmap("tab10", len(names))
    fig = plt.figure(figsize=(11, 4.6))
    grid = fig.add_gridspec(2, 3, width_ratios=[1, 1, 0.42], left=0.06, right=0.99, top=0.84, bottom=0.2,
                            wspace=0.25, hspace=0.35)
    half = (axis[1] - axis[0]) / 2
    bounds = (axis[0] - half, axis[-1] + half, axis[0] - half, axis[-1] + half)
    n = meta["iterations"]
    every = max(1, round(len(axis) / 13))  # about 13 x 13 arrows
    a, b = np.meshgrid(axis[::every], axis[::every])
    moves = arrays["moves"][::every, ::every]
    length = np.linalg.norm(moves, axis=-1)
    shrink = min(1.0, (axis[every] - axis[0]) / max(np.quantile(length, 0.9), 1e-12)) if len(axis) > every else 1.0
    panels = [("before", f"after 0 iterations; arrows: one feedback iteration (x {shrink:.2g}),\n"
                         f"{100 * meta['toward_image']:.0f} % of them point toward the image"),
              ("after", f"after {n} iterations ({meta['output']} output); dots: the neighbours")]
    for column, (key, title) in enumerate(panels):
        ax = fig.add_subplot(grid[:, column])
        ax.imshow(arrays[key], origin="lower", extent=bounds, cmap=colours, vmin=-0.5, vmax=len(names) - 0.5,
                  interpolation="nearest", alpha=0.75)
        if key == "before":
            ax.quiver(a, b, shrink * moves[..., 0], shrink * moves[..., 1], angles="xy", scale_units="xy",
                      scale=1, width=0.004, color="black")
        else:
            ax.scatter(*arrays["neighbours"].T, c=arrays["neighbour_labels"], cmap=colours, vmin=-0.5,
                       vmax=len(names) - 0.5, s=9, edgecolors="black", linewidths=0.4)
        ax.plot(0, 0, marker="*", ms=14, color="white", markeredgecolor="black")
        ax.set_xlim(bounds[:2]), ax.set_ylim(bounds[2:])
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("a (along $d_1$)", fontsize=8)
        ax.set_ylabel("b (along $d_2$)", fontsize=8)
        ax.tick_params(labelsize=7)
    for row in range(2):
        ax = fig.add_subplot(grid[row, 2])
        direction = arrays["directions"][row]
        limit = np.abs(direction).max()
        ax.imshow(direction[0] if direction.shape[0] == 1 else direction.mean(0), cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(f"$d_{row + 1}$ (s = {meta['spread'][row]:.2f})", fontsize=8)
    handles = [plt.Line2D([], [], marker="s", ls="", color=colours(c), label=name) for c, name in enumerate(names)]
    fig.legend(handles=handles, loc="lower center", ncol=len(names), fontsize=7, frameon=False)
    fig.suptitle(f"test image #{meta['index']} ({names[meta['label']]}, star) in the plane of its {meta['neighbours']} "
                 f"nearest test images' two principal directions", fontsize=9)
    return save_figure(fig, out, dpi=90)
