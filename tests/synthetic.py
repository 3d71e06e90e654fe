"""Synthetic data files for tests: the standard Fashion-MNIST idx files with random content."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

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
