"""What the figures share: records (compute -> .npz -> plot), image picking, distances, pyplot.

A record is one compressed .npz file: named float / int arrays plus `meta`, a JSON text holding
the record's kind ("restoration", "gradcam", "cells"), the model, the data and the settings.
Plots read records only, never a live model, so a figure can be redrawn without recomputing.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from cnnf.data import ImageSet
from cnnf.device import device_of
from cnnf.model import CNNF

RECORD_FORMAT = 1

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
"""Fashion-MNIST's label names, in label order (Xiao et al., 2017)."""


class RecordError(ValueError):
    """A missing record or one of another kind; the message names the file and the fix."""


@dataclass
class Record:
    """What a figure is drawn from: its `kind` ("restoration", "gradcam", "cells"), `meta`
    (plain JSON data: model, data, settings, summary numbers) and named numpy `arrays`."""

    kind: str
    meta: dict
    arrays: dict[str, np.ndarray]

    def save(self, path: Path) -> Path:
        """Write the record to the .npz file `path`; returns `path`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"format": RECORD_FORMAT, "kind": self.kind, **self.meta})
        with path.open("wb") as handle:  # a file handle: numpy would add ".npz" to a name without it
            np.savez_compressed(handle, meta=np.array(text), **self.arrays)
        return path

    @classmethod
    def load(cls, path: Path, kind: str) -> Record:
        """The record of `kind` saved at `path`, or RecordError naming the file and the fix."""
        found = record_kind(path)
        if found != kind:
            raise RecordError(f"{path} is a {found!r} record, not a {kind!r} one; plot it with `cnnf viz plot {path}`")
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        meta = json.loads(str(arrays.pop("meta")))
        return cls(meta.pop("kind"), {k: v for k, v in meta.items() if k != "format"}, arrays)


def record_kind(path: Path) -> str:
    """The kind of the record at `path` ("restoration", "gradcam" or "cells"), or RecordError."""
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"no record {path}; check the path, or make it with `cnnf viz restoration|gradcam|cells`")
    try:
        with np.load(path, allow_pickle=False) as data:
            return json.loads(str(data["meta"]))["kind"]
    except (ValueError, OSError, KeyError) as error:
        raise RecordError(f"{path} is not a cnnf viz record ({type(error).__name__}); "
                          "make one with `cnnf viz restoration|gradcam|cells`") from None


def check_pixel_feedback(model: CNNF, figure: str) -> None:
    """Refuse a model whose feedback does not generate images (reconstruct_to != 0)."""
    if model.reconstruct_to != 0:
        raise ValueError(f"the {figure} figure needs a model whose feedback reconstructs the pixels "
                         f"(reconstruct_to = 0); this one reconstructs to layer {model.reconstruct_to}: "
                         "give a model trained with reconstruct_to: 0 (e.g. paper_mnist)")


def pick(images: ImageSet, index: list[int]) -> tuple[Tensor, Tensor]:
    """Images (len(index), C, H, W) in [-1, 1] and their labels, or a ValueError naming a bad index."""
    bad = [i for i in index if not 0 <= i < len(images)]
    if bad:
        raise ValueError(f"image index {bad[0]} is out of range: the test set has {len(images)} images "
                         f"(0..{len(images) - 1}); pick indices in that range")
    x, y = next(images.subset(torch.tensor(index, dtype=torch.long)).batches(len(index)))
    return x, y


def first(images: ImageSet, n: int) -> ImageSet:
    """The first min(n, len(images)) images."""
    return images.subset(torch.arange(min(n, len(images))))


def on_model(model: CNNF, *tensors: Tensor) -> tuple[Tensor, ...]:
    """`tensors` moved to the model's device."""
    device = device_of(model)
    return tuple(t.to(device) for t in tensors)


def rms_distance(a: Tensor, b: Tensor) -> Tensor:
    """Root-mean-square pixel distance per image, (B,), in [0, 1] image units (a, b in [-1, 1] units)."""
    return (a - b).flatten(1).square().mean(1).sqrt() / 2


def class_names(dataset: str, num_classes: int) -> list[str]:
    """Label names: Fashion-MNIST's, else the class indices as text."""
    if dataset == "fashion-mnist" and num_classes == len(FASHION_MNIST_CLASSES):
        return list(FASHION_MNIST_CLASSES)
    return [str(c) for c in range(num_classes)]


def display(image: np.ndarray) -> np.ndarray:
    """An image (C, H, W) in [-1, 1] units as [0, 1] pixels for imshow: (H, W) or (H, W, 3); clipped."""
    pixels = np.clip((image + 1) / 2, 0, 1)
    return pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: Path, dpi: int = 80) -> Path:
    """Write `fig` to `out` (its folder is created), cropped to what is drawn, and close it. A .png
    is stored with a 256-colour palette: a third of the size, to the eye the same colours."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    options = {"dpi": dpi, "bbox_inches": "tight", "pad_inches": 0.1}
    if out.suffix.lower() == ".png":
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", **options)
        palette = Image.open(buffer).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
        palette.save(out, optimize=True)
    else:
        fig.savefig(out, **options)
    pyplot().close(fig)
    return out
