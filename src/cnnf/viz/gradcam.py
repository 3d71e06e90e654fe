"""Grad-CAM over feedback iterations (figure 9b, 9c), with Captum's LayerGradCam.

Grad-CAM (Selvaraju et al., 2017) of class c on a layer's activation A (C, h, w):
    cam = ReLU(sum_c' alpha_c' A_c'),  alpha_c' = mean over (h, w) of d s_c / d A_c',
s_c the score of class c. At iteration t, s is the model's scored logits after t iterations
(`cnnf.scoring`: y_t, or the mean of y_0..y_t) and A is layer L's output *at step t*: the
output of block L in the feedforward pass of step t, driven by the feedback of step t - 1.

Targeting step t. The model calls its layers once per step, and the fast backend does not call
them as modules at all, so a hook on a layer cannot single out one step. `StepScores` is a small
module that runs inference for t iterations without a graph, takes A_t from the trajectory,
passes it through `tap` (an identity module, what LayerGradCam hooks) and runs the layers above
block L once more from the tapped A_t, with step t's drives, to the scored logits. Those logits
equal the trajectory's (a test checks it), and their gradient reaches A_t only through the
layers of step t above L, which is what d s / d A_t means. L defaults to the last block whose
output is still a feature map (for paper_mnist: block 2, conv 64 + AdaPool, 64 x 12 x 12).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from cnnf.data import ImageSet
from cnnf.model import CNNF
from cnnf.scoring import score, scores_per_step
from cnnf.viz.common import Record, class_names, display, first, on_model, pyplot, save_figure
from cnnf.viz.corruptions import KINDS, Corruptions

KIND = "gradcam"
WRONG_TO_RIGHT, UNCHANGED, RIGHT_TO_WRONG = 1, 0, -1
"""Flip codes: the prediction after 0 iterations against the one after N."""


def cam_layer(model: CNNF) -> int:
    """The last block output that is a feature map (C, h, w) and lies at or above k."""
    maps = [b for b in range(model.reconstruct_to, len(model.block_ends) - 1)
            if len(model.shapes[model.block_ends[b]]) == 3]
    if not maps:
        raise ValueError("Grad-CAM needs a feature map (C, h, w) at or above the layer the feedback reconstructs to; "
                         f"this model has none above layer {model.reconstruct_to}")
    return maps[-1]


class StepScores(nn.Module):
    """Images x (B, C, H, W) in [-1, 1] -> the scored logits (B, classes) after `step` feedback
    iterations, with block `layer`'s output at that step passed through `self.tap`."""

    def __init__(self, model: CNNF, step: int, layer: int):
        super().__init__()
        if not model.reconstruct_to <= layer < len(model.block_ends) - 1:
            raise ValueError(f"layer must be a block output in {model.reconstruct_to}..{len(model.block_ends) - 2} "
                             f"(at or above k = {model.reconstruct_to}), got {layer}")
        self.model, self.step, self.layer = model, step, layer
        self.tap = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            run = self.model.infer(x, iterations=self.step, keep_activations=True)
        if self.layer == self.model.reconstruct_to:
            activation = run.features[self.step]
        else:
            activation = run.activations[self.step][self.model.block_ends[self.layer] - 1]
        drive = run.feedbacks[self.step - 1].signals if self.step else None
        logits, _ = self.model.feedforward(self.tap(activation), from_layer=self.layer, drive=drive)
        return score([*run.logits[: self.step], logits], self.model.output)


def grad_cam(model: CNNF, x: Tensor, step: int, target: Tensor, layer: int | None = None) -> Tensor:
    """Grad-CAM maps (B, H, W) >= 0 of class `target` (B,) at iteration `step` on images x
    (B, C, H, W), upsampled bilinearly from layer L's (h, w) to the image size."""
    from captum.attr import LayerAttribution, LayerGradCam

    scores = StepScores(model, step, cam_layer(model) if layer is None else layer)
    cam = LayerGradCam(scores, scores.tap).attribute(x, target=target, relu_attributions=True)
    return LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode="bilinear")[:, 0].detach()


def flips(correct: np.ndarray) -> np.ndarray:
    """Per image, from `correct` (B, N + 1) bool: WRONG_TO_RIGHT if wrong after 0 iterations and
    right after N, RIGHT_TO_WRONG for the reverse, else UNCHANGED."""
    return np.where(~correct[:, 0] & correct[:, -1], WRONG_TO_RIGHT,
                    np.where(correct[:, 0] & ~correct[:, -1], RIGHT_TO_WRONG, UNCHANGED))


def choose(flip: np.ndarray, show: int) -> np.ndarray:
    """Up to `show` image positions: wrong->right and right->wrong alternately, then unchanged ones."""
    ups, downs = np.flatnonzero(flip == WRONG_TO_RIGHT), np.flatnonzero(flip == RIGHT_TO_WRONG)
    alternating = [i for pair in zip(ups, downs) for i in pair]
    rest = [*ups[len(downs):], *downs[len(ups):], *np.flatnonzero(flip == UNCHANGED)]
    return np.array([*alternating, *rest][:show], dtype=np.int64)


def compute_gradcam(model: CNNF, images: ImageSet, dataset: str, pool: int, show: int,
                    corruptions: Corruptions, iterations: int | None = None, batch_size: int = 500) -> Record:
    """The record of figures 9b/9c. For each kind in KINDS, on the first `pool` test images:
    the accuracy after t = 0..N iterations and the number of wrong->right and right->wrong
    flips (0 against N iterations); for `show` of them (flips first), Grad-CAM at every t."""
    n = model.iterations if iterations is None else iterations
    layer = cam_layer(model)
    pool_set = first(images, pool)
    (y,) = on_model(model, pool_set.labels)
    arrays: dict[str, np.ndarray] = {}
    counts, accuracy = {}, {}
    for kind in KINDS:
        xc, predictions = corrupt_and_predict(model, pool_set, kind, corruptions, n, batch_size)
        correct = (predictions == y[:, None]).cpu().numpy()
        flip = flips(correct)
        chosen = choose(flip, show)
        picked = torch.from_numpy(chosen).to(y.device)
        cams = torch.stack([grad_cam(model, xc[picked], t, predictions[picked, t], layer) for t in range(n + 1)], 1)
        arrays |= {f"{kind}.index": chosen, f"{kind}.images": xc[picked].cpu().numpy(),
                   f"{kind}.cams": cams.cpu().numpy(), f"{kind}.predictions": predictions[picked].cpu().numpy(),
                   f"{kind}.labels": y[picked].cpu().numpy(), f"{kind}.flips": flip[chosen]}
        counts[kind] = {"wrong_to_right": int((flip == WRONG_TO_RIGHT).sum()),
                        "right_to_wrong": int((flip == RIGHT_TO_WRONG).sum())}
        accuracy[kind] = correct.mean(0).tolist()
    meta = {"dataset": dataset, "class_names": class_names(dataset, model.num_classes), "iterations": n,
            "output": model.output, "layer": layer, "pool": len(pool_set), "kinds": list(KINDS),
            "descriptions": {kind: corruptions.describe(kind) for kind in KINDS},
            "flips": counts, "accuracy": accuracy}
    return Record(KIND, meta, arrays)


def corrupt_and_predict(model: CNNF, images: ImageSet, kind: str, corruptions: Corruptions, iterations: int,
                        batch_size: int) -> tuple[Tensor, Tensor]:
    """The `kind` corruption of every image (B, C, H, W) and the scored class after t = 0..N
    iterations (B, N + 1), batch by batch."""
    corrupted, predictions, generator = [], [], corruptions.generator()
    for x, y in images.batches(batch_size):
        x, y = on_model(model, x, y)
        xc = corruptions.apply(kind, model, x, y, generator)
        with torch.no_grad():
            logits = model.infer(xc, iterations=iterations).logits
        corrupted.append(xc)
        predictions.append(scores_per_step(logits, model.output).argmax(-1).T)
    return torch.cat(corrupted), torch.cat(predictions)


def plot_gradcam(record_path: Path, out: Path) -> Path:
    """Draw a Grad-CAM record: one row per shown image (input, then the map of the predicted class
    after t = 0..N iterations over the input, titled with that class: green right, red wrong),
    and the accuracy per iteration of each kind below."""
    record = Record.load(record_path, KIND)
    meta, arrays = record.meta, record.arrays
    n, names = meta["iterations"], meta["class_names"]
    rows = [(kind, i) for kind in meta["kinds"] for i in range(len(arrays[f"{kind}.index"]))]
    if not rows:
        raise ValueError(f"{record_path} shows no images; make it again with --show 1 or more")
    plt = pyplot()
    cols = n + 2
    width = max(1.05 * cols + 0.9, 6.5)  # room for the legend when N is small
    fig = plt.figure(figsize=(width, 1.2 * len(rows) + 3.0))
    grid = fig.add_gridspec(len(rows) + 1, cols, height_ratios=[1] * len(rows) + [1.9], hspace=0.45, wspace=0.08,
                            left=0.13, right=0.98, top=1 - 0.25 / (1.2 * len(rows) + 3), bottom=1.0 / (1.2 * len(rows) + 3))
    for r, (kind, i) in enumerate(rows):
        image, label = display(arrays[f"{kind}.images"][i]), int(arrays[f"{kind}.labels"][i])
        flip = {WRONG_TO_RIGHT: ("wrong→right", "tab:green"), RIGHT_TO_WRONG: ("right→wrong", "tab:red"),
                UNCHANGED: ("", "black")}[int(arrays[f"{kind}.flips"][i])]
        ax = fig.add_subplot(grid[r, 0])
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_ylabel(f"{kind} #{arrays[f'{kind}.index'][i]}\n{names[label]}\n{flip[0]}", fontsize=6.5, color=flip[1])
        for t in range(n + 1):
            cam = arrays[f"{kind}.cams"][i, t]
            predicted = int(arrays[f"{kind}.predictions"][i, t])
            ax = fig.add_subplot(grid[r, t + 1])
            ax.imshow(image, cmap="gray", vmin=0, vmax=1)
            ax.imshow(cam / max(cam.max(), 1e-12), cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"t={t}: {names[predicted]}", fontsize=6, color="tab:green" if predicted == label else "tab:red")
    ax = fig.add_subplot(grid[-1, :])
    for kind in meta["kinds"]:
        count = meta["flips"][kind]
        ax.plot(range(n + 1), [100 * a for a in meta["accuracy"][kind]], marker="o", ms=3,
                label=f"{meta['descriptions'][kind]}: {count['wrong_to_right']} wrong→right, "
                      f"{count['right_to_wrong']} right→wrong")
    ax.set_xticks(range(n + 1))
    ax.set_xlabel("feedback iterations t", fontsize=7)
    ax.set_ylabel(f"accuracy (%), {meta['output']}", fontsize=7)
    ax.set_title(f"first {meta['pool']} test images; flips compare t = 0 with t = {n}", fontsize=7)
    ax.set_ylim(0, 100)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2 if width > 7.5 else 1, frameon=False)
    return save_figure(fig, out)
