"""cnnf.viz: figure 9's views of the feedback and the HTML report.

Grad-CAM targets the right step (against a map computed by hand), the records hold what the
figures claim (frames, distances, flips, arrows), every `cnnf viz` command and `cnnf report`
run on the shipped CNN-F-5 with small sizes, bad input ends in one line, and the report renders
in headless Chromium (skipped where it is missing)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cnnf
from cnnf import checkpoint
from cnnf.cli import main
from cnnf.data import load_dataset
from cnnf.scoring import score
from cnnf.viz import Corruptions, Record, StepScores, compute_cells, compute_restoration, gaussian_blur, grad_cam
from cnnf.viz.cells import principal_plane, toward_origin
from cnnf.viz.common import rms_distance
from cnnf.viz.gradcam import RIGHT_TO_WRONG, UNCHANGED, WRONG_TO_RIGHT, cam_layer, choose, flips
from synthetic import make_fashion_dir

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
FAST = ["--pgd-steps", "2", "--iterations", "2"]


@pytest.fixture(scope="module")
def model():
    return cnnf.load_pretrained("cnnf5_fmnist")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A Fashion-MNIST folder of 12 random test images (the commands take --data-dir)."""
    folder = tmp_path_factory.mktemp("fashion")
    make_fashion_dir(folder, n_train=2, n_test=12)
    return folder


@pytest.fixture(scope="module")
def test_images(data_dir):
    return load_dataset("fashion-mnist", data_dir)["test"]


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# Grad-CAM at step t


@pytest.mark.parametrize("output", ["last", "average"])
def test_step_scores_are_the_scored_logits_after_t_iterations(model, output):
    model = checkpoint.load_pretrained("cnnf5_fmnist", output=output)
    x = _images(3)
    with torch.no_grad():
        run = model.infer(x, iterations=3)
        for t in range(4):
            assert torch.allclose(StepScores(model, t, cam_layer(model))(x), score(run.logits[: t + 1], output), atol=1e-5)


def test_grad_cam_is_the_map_of_the_step_t_activation(model):
    """Against Grad-CAM by hand: alpha = spatial mean of d y_t[c] / d A_t, cam = ReLU(sum alpha A_t),
    A_t the output of block 2 in the pass of step t, with step t's drives."""
    x, layer = _images(2, seed=1), cam_layer(model)
    assert layer == 2 and model.shapes[model.block_ends[layer]] == (64, 12, 12)
    maps = {}
    for t in (0, 2):
        with torch.no_grad():
            run = model.infer(x, iterations=t, keep_activations=True)
        target = run.logits[t].argmax(1)
        activation = run.activations[t][model.block_ends[layer] - 1].clone().requires_grad_(True)
        logits, _ = model.feedforward(activation, from_layer=layer, drive=run.feedbacks[t - 1].signals if t else None)
        (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), activation)
        expected = F.relu((grad.mean((2, 3), keepdim=True) * activation).sum(1, keepdim=True))
        expected = F.interpolate(expected, size=(28, 28), mode="bilinear")[:, 0]
        maps[t] = grad_cam(model, x, t, target)
        assert maps[t].shape == (2, 28, 28) and (maps[t] >= 0).all()
        torch.testing.assert_close(maps[t], expected.detach(), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(maps[0], maps[2])  # the step matters


def test_flips_compare_the_first_and_the_last_step():
    correct = np.array([[False, True, True], [True, False, False], [True, False, True], [False, False, False]])
    assert flips(correct).tolist() == [WRONG_TO_RIGHT, RIGHT_TO_WRONG, UNCHANGED, UNCHANGED]
    flip = np.array([UNCHANGED, RIGHT_TO_WRONG, RIGHT_TO_WRONG, WRONG_TO_RIGHT, UNCHANGED])
    assert choose(flip, 4).tolist() == [3, 1, 2, 0]


# Corruptions


def test_blur_keeps_constant_images_and_smooths_others():
    constant = torch.full((1, 1, 28, 28), 0.3)
    assert torch.allclose(gaussian_blur(constant, 1.5), constant)
    x = _images(2)
    blurred = gaussian_blur(x, 1.0)
    assert blurred.shape == x.shape and blurred.var() < 0.5 * x.var()


def test_corruptions_stay_in_range_and_in_budget(model):
    x, y = _images(4), torch.tensor([0, 1, 2, 3])
    corruptions = Corruptions(noise_std=0.5, eps=0.05, pgd_steps=3)
    for kind in ("clean", "blur", "noise", "pgd"):
        xc = corruptions.apply(kind, model, x, y)
        assert xc.shape == x.shape and xc.min() >= -1 and xc.max() <= 1
    assert (corruptions.apply("pgd", model, x, y) - x).abs().max() <= 2 * 0.05 + 1e-6
    assert torch.equal(corruptions.apply("noise", model, x, y), corruptions.apply("noise", model, x, y))  # seeded


# Restoration and decision cells


def test_restoration_record_holds_inputs_reconstructions_and_their_distances(model, test_images):
    record = compute_restoration(model, test_images, "fashion-mnist", [0, 1, 2], 3, Corruptions(pgd_steps=2), iterations=2)
    a = record.arrays
    clean = torch.from_numpy(a["clean"])
    for kind in ("clean", "blur", "noise", "pgd"):
        frames = torch.from_numpy(a[f"{kind}.frames"])
        assert frames.shape == (3, 3, 1, 28, 28) and a[f"{kind}.predictions"].shape == (3, 3)
        expected = rms_distance(frames.flatten(0, 1), clean.repeat_interleave(3, 0)).view(3, 3)
        assert np.allclose(a[f"{kind}.distance"], expected.numpy(), atol=1e-6)
    assert np.all(a["clean.distance"][:, 0] == 0)  # the clean input is the clean image
    with torch.no_grad():
        run = model.infer(clean, iterations=2)
    assert np.allclose(a["clean.frames"][:, 1], run.reconstructions[0].numpy(), atol=1e-5)
    for kind in ("clean", "blur"):  # deterministic: the mean over the first 3 images is the shown images' mean
        assert np.allclose(a[f"{kind}.mean_distance"], a[f"{kind}.distance"].mean(0), atol=1e-6)
    assert record.meta["mean_distance"]["blur"][0] > 0


def test_decision_cells_plane_and_arrows(model, test_images):
    x0 = _images(1)[0]
    directions, spread, near = principal_plane(x0, _images(30, seed=2), 10)
    gram = directions.flatten(1) @ directions.flatten(1).T
    assert torch.allclose(gram, torch.eye(2), atol=1e-5) and spread[0] >= spread[1] > 0 and len(near) == 10
    axis = np.linspace(-1, 1, 5)
    a, b = np.meshgrid(axis, axis)
    inward = -np.stack([a, b], -1)
    assert toward_origin(inward, axis) == 1.0 and toward_origin(-inward, axis) == 0.0
    record = compute_cells(model, test_images, "fashion-mnist", 3, neighbours=5, grid=4, iterations=1)
    assert record.arrays["before"].shape == (4, 4) and record.arrays["moves"].shape == (4, 4, 2)
    assert record.arrays["neighbours"].shape == (5, 2) and 0 <= record.meta["toward_image"] <= 1
    label = int(test_images.labels[3])
    assert record.meta["own_class"] == [(record.arrays[key] == label).mean() for key in ("before", "after")]
    with torch.no_grad():  # the centre of an odd grid is the image itself
        centre = compute_cells(model, test_images, "fashion-mnist", 3, neighbours=5, grid=3, iterations=1)
        x, _ = next(test_images.subset(torch.tensor([3])).batches(1))
        assert centre.arrays["before"][1, 1] == model.infer(x, iterations=0).logits[0].argmax().item()


# The command line on the shipped CNN-F-5


def _run(args: list[str]) -> None:
    assert main(args) == 0


def _error(capsys, args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnnf: error: ") and "\n" not in err, err
    return err


def test_viz_commands_write_figures_and_records(tmp_path, data_dir, capsys):
    common = ["--data-dir", str(data_dir), *FAST]
    _run(["viz", "restoration", "cnnf5_fmnist", "--images", "0,5", "--mean-over", "4", "--out", str(tmp_path / "r.png"), *common])
    assert "mean RMS distance" in capsys.readouterr().out
    _run(["viz", "gradcam", "--pretrained", "cnnf5_fmnist", "--pool", "6", "--show", "1", "--out", str(tmp_path / "g.png"), *common])
    assert "wrong->right" in capsys.readouterr().out
    _run(["viz", "cells", "cnnf5_fmnist", "--image", "2", "--neighbours", "4", "--grid", "3", "--out", str(tmp_path / "c.png"),
          "--data-dir", str(data_dir), "--iterations", "1"])
    for name, kind in (("r", "restoration"), ("g", "gradcam"), ("c", "cells")):
        assert (tmp_path / f"{name}.png").stat().st_size > 5000
        assert Record.load(tmp_path / f"{name}.npz", kind).meta["iterations"] in (1, 2)
    gradcam = Record.load(tmp_path / "g.npz", "gradcam")
    assert gradcam.arrays["pgd.cams"].shape == (1, 3, 28, 28)
    assert sum(gradcam.meta["flips"]["pgd"].values()) <= 6
    _run(["viz", "plot", str(tmp_path / "c.npz"), "--out", str(tmp_path / "again.png")])
    assert (tmp_path / "again.png").stat().st_size > 5000


def test_viz_bad_input_is_one_line(tmp_path, data_dir, capsys):
    k2 = tmp_path / "k2.pt"
    checkpoint.save_atomic(checkpoint.model_state(cnnf.create_model("conv4_mnist", iterations=1)), k2)
    out = str(tmp_path / "x.png")
    for figure in ("restoration", "cells"):
        err = _error(capsys, ["viz", figure, str(k2), "--data-dir", str(data_dir), "--out", out])
        assert "reconstructs the pixels (reconstruct_to = 0)" in err and "layer 2" in err
    err = _error(capsys, ["viz", "restoration", "cnnf5_fmnist", "--images", "0,12", "--data-dir", str(data_dir), "--out", out])
    assert "image index 12 is out of range: the test set has 12 images (0..11)" in err
    assert "no file" in _error(capsys, ["viz", "plot", str(tmp_path / "none.npz"), "--out", out])
    assert "expected a number > 0" in _error(capsys, ["viz", "gradcam", "cnnf5_fmnist", "--noise-std", "-1", "--out", out])
    assert "eps must be in [0, 1]" in _error(capsys, ["viz", "gradcam", "cnnf5_fmnist", "--eps", "8", "--out", out])
    assert "expected an image file" in _error(capsys, ["viz", "cells", "cnnf5_fmnist", "--out", str(tmp_path / "x.txt")])
    (tmp_path / "notes.npz").write_text("not a record")
    assert "is not a cnnf viz record" in _error(capsys, ["viz", "plot", str(tmp_path / "notes.npz"), "--out", out])
    assert "is a file" in _error(capsys, ["report", "cnnf5_fmnist", "--out", str(tmp_path / "notes.npz")])


# The report


@pytest.fixture(scope="module")
def report(tmp_path_factory, data_dir) -> Path:
    """`cnnf report` of the shipped CNN-F-5 and CNN with a results file, at small sizes."""
    out = tmp_path_factory.mktemp("report")
    assert main(["report", "cnnf5_fmnist", "cnn_fmnist", "--out", str(out), "--data-dir", str(data_dir),
                 "--results", str(REPO / "results" / "cnnf5_fmnist_autoattack.json"), "--accuracy-images", "12",
                 "--images", "0", "--mean-over", "4", "--pool", "6", "--show", "1", "--grid", "3",
                 "--neighbours", "4", "--pgd-steps", "2"]) == 0
    return out


def test_report_is_one_static_page_with_every_part(report):
    page = (report / "index.html").read_text()
    for part in ("Clean accuracy per iteration", "Robustness", "model card", "Grad-CAM over iterations",
                 "Restoration (figure 9d)", "Decision cells (figure 9a)", "runs no feedback iterations (N = 0)"):
        assert part in page, part
    sources = page.split('src="')[1:]
    assert len(sources) == 6  # accuracy and robustness; CNN-F-5's three figures; the CNN's Grad-CAM
    for src in sources:
        path = src.split('"')[0]
        assert not path.startswith(("http", "/")) and (report / path).is_file(), path
    accuracy = json.loads((report / "accuracy.json").read_text())
    assert len(accuracy["cnnf5_fmnist"]["last"]) == 6 and len(accuracy["cnn_fmnist"]["last"]) == 1


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,2000",
                    f"--screenshot={shot}", (report / "index.html").as_uri()], check=True, capture_output=True, timeout=60)
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.shape == (2000, 1200, 3)
    ink = (pixels.min(-1) < 200).mean()  # text, plot lines and images, against a white page
    colour = (pixels.max(-1) - pixels.min(-1) > 60).mean()  # the plots' and heat maps' colours
    assert 0.03 < ink < 0.8 and colour > 0.005, (ink, colour)
