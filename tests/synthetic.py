"""Synthetic data files for tests: Fashion-MNIST idx files, CIFAR-10 binary batches, ImageFolder trees."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

from cnnf import data

rng = np.random.default_rng(0)


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` as an unsigned-byte idx file, gzip-compressed when the name ends in .gz."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def make_fashion_dir(directory: Path, n_train: int = 5, n_test: int = 3, gz: bool = True) -> dict[str, tuple]:
    """Write the four standard files with random content; return {split: (images, labels)}."""
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    content = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        image_stem, label_stem = data.FASHION_FILES[split]
        write_idx(directory / f"{image_stem}{suffix}", images)
        write_idx(directory / f"{label_stem}{suffix}", labels)
        content[split] = (images, labels)
    return content


def write_cifar_file(path: Path, labels: list[int], images: np.ndarray | None = None) -> np.ndarray:
    """Write CIFAR-10 binary records (label byte + R, G, B 32x32 planes); return the uint8 (n, 3, 32, 32) images."""
    if images is None:
        images = rng.integers(0, 256, size=(len(labels), 3, 32, 32), dtype=np.uint8)
    records = np.concatenate([np.array(labels, dtype=np.uint8)[:, None], images.reshape(len(labels), -1)], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(records.tobytes())
    return images


def make_cifar_dir(directory: Path, counts: tuple[int, ...] = (2, 3, 1, 2, 2, 3)) -> dict[str, tuple]:
    """data_batch_1..5.bin and test_batch.bin with ``counts`` records; return {split: (images, labels)}."""
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    parts = {}
    for name, n in zip(names, counts):
        labels = rng.integers(0, 10, size=n).tolist()
        parts[name] = (write_cifar_file(directory / name, labels), np.array(labels, dtype=np.int64))
    train = [parts[name] for name in names[:5]]
    return {
        "train": (np.concatenate([i for i, _ in train]), np.concatenate([l for _, l in train])),
        "test": parts["test_batch.bin"],
    }


def write_image(path: Path, pixels: np.ndarray) -> Path:
    """Save uint8 (H, W, 3) RGB or (H, W) grey pixels with Pillow (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def make_image_folder(root: Path, classes: dict[str, list[tuple[int, int]]], split: str = "train") -> None:
    """``root/split/<class>/img<i>.png`` (even i) or ``.jpg`` (odd i) of the given (width, height)s."""
    for name, sizes in classes.items():
        for i, (width, height) in enumerate(sizes):
            pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            write_image(root / split / name / f"img{i}.{'jpg' if i % 2 else 'png'}", pixels)
