"""Neural predictivity on synthetic recordings whose answers are known analytically."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import cnnf
from cnnf import neuro
from cnnf.cli import main


@pytest.fixture(autouse=True, scope="module")
def reference_backend():
    """The reference backend: the features do not depend on it (docs/DESIGN.md section 9), and the
    fast one may first have to compile its kernels (minutes on a busy 2-core machine)."""
    with cnnf.use_backend("reference"):
        yield


def _linear_recordings(snr: float, images: int = 500, dims: int = 10, sites: int = 20, seed: int = 0):
    """(features, responses, labels): responses = features @ W + noise, var(signal) / var(noise)
    = snr at every site; 10 object labels of equal size."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((images, dims))
    signal = features @ rng.standard_normal((dims, sites))
    noise = rng.standard_normal((images, sites)) * signal.std(axis=0) / math.sqrt(snr)
    return features, signal + noise, np.repeat(np.arange(10), images // 10)


@pytest.mark.parametrize("snr", [0.25, 1.0, 4.0])
def test_a_linear_map_plus_noise_scores_the_noise_limited_r(snr):
    features, responses, labels = _linear_recordings(snr)
    result = neuro.neural_predictivity(features, responses, labels, n_components=10)
    limit = math.sqrt(snr / (1 + snr))  # r of the noiseless signal with signal + noise
    # a map fitted on 450 images of 10 features misses by noise variance x 10 / (450 - 11) on average
    fitted = 1 / math.sqrt((1 + 10 / 439 / snr) * (1 + 1 / snr))
    assert result.r.shape == (10, 20) and result.split_medians.shape == (10,) and result.per_site.shape == (20,)
    assert abs(result.score - limit) < 0.03 and abs(result.score - fitted) < 0.015
    assert result.score < limit + 0.01  # held-out images cannot beat the noise
    assert result.ceiling is None and result.ceiled is None


def test_responses_unrelated_to_the_features_score_near_zero():
    features, _, labels = _linear_recordings(1.0, images=200)
    responses = np.random.default_rng(1).standard_normal((200, 20))
    result = neuro.neural_predictivity(features, responses, labels, n_components=10)
    assert abs(result.score) < 0.1 and result.sem > 0


def test_more_components_than_feature_dimensions_are_refused():
    features, responses, labels = _linear_recordings(1.0, images=100)
    with pytest.raises(ValueError, match=re.escape("n_components must be in 1..10 (the feature dimensions")):
        neuro.neural_predictivity(features, responses, labels)


def test_the_split_half_ceiling_matches_spearman_brown():
    reps, images, sites, noise_var = 10, 400, 20, 5.0
    rng = np.random.default_rng(2)
    signal = rng.standard_normal((images, sites))
    repetitions = signal + rng.standard_normal((reps, images, sites)) * math.sqrt(noise_var)
    reliability = 1 / (1 + noise_var / reps)  # = 2 r_half / (1 + r_half), r_half = 1 / (1 + 2 noise_var / reps)
    ceiling = neuro.split_half_ceiling(repetitions, seed=0)
    assert ceiling.r.shape == (10, sites) and ceiling.per_site.shape == (sites,)
    assert abs(ceiling.value - reliability) < 0.03
    result = neuro.neural_predictivity(signal, repetitions.mean(axis=0), repetitions=repetitions, n_components=5)
    assert result.ceiling.value == ceiling.value and result.ceiled == pytest.approx(result.score / ceiling.value)


def test_pearson_skips_missing_presentations():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((30, 2)), rng.standard_normal((30, 2))
    a[[3, 7], 0] = np.nan
    keep = np.ones(30, dtype=bool)
    keep[[3, 7]] = False
    expected = [np.corrcoef(a[keep, 0], b[keep, 0])[0, 1], np.corrcoef(a[:, 1], b[:, 1])[0, 1]]
    np.testing.assert_allclose(neuro.pearson(a, b), expected, rtol=1e-12)


def test_splits_are_stratified_by_label():
    labels = np.repeat(np.array(["car", "face", "fruit", "animal", "boat"]), 40)
    folds = neuro.image_splits(200, labels, splits=10, seed=0)
    assert len(folds) == 10
    for train, test in folds:
        assert sorted(np.concatenate([train, test]).tolist()) == list(range(200))
        assert {label: int((labels[test] == label).sum()) for label in set(labels)} == {label: 4 for label in set(labels)}
    assert len({tuple(sorted(test)) for _, test in folds}) == 10
    plain = neuro.image_splits(200, splits=3, seed=0)
    assert [len(test) for _, test in plain] == [20] * 3


def test_model_features_hold_every_step_and_step_zero_is_the_feedforward_pass(one_thread):
    model = cnnf.create_model("paper_mnist", iterations=2)
    x = torch.rand(6, 1, 28, 28) * 2 - 1
    features = neuro.model_features(model, x, ["block1", "5", "block3"], batch_size=4)
    assert sorted(features) == sorted((name, t) for name in ("block1", "5", "block3") for t in range(3))
    sizes = {"block1": 32 * 26 * 26, "5": 64 * 24 * 24, "block3": 128}
    assert all(values.shape == (6, sizes[name]) and values.dtype == np.float64 for (name, _), values in features.items())
    h, plain = x, {}
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            h, _ = layer(h, None)
            plain[i] = h.flatten(1).double().numpy()
    for name, index in (("block1", 3), ("5", 5), ("block3", 11)):
        np.testing.assert_allclose(features[name, 0], plain[index], atol=1e-5)
    assert not np.allclose(features["block3", 2], features["block3", 0], atol=1e-3)


@pytest.mark.parametrize("model, name, needle", [
    ("conv4_mnist", "block1", "lies below the reconstructed layer k = 2"),
    ("paper_mnist", "block5", "the model has blocks 1..4"),
    ("paper_mnist", "99", "the model has layers 0..13"),
    ("paper_mnist", "conv1", "expected a layer index (e.g. 3) or a block output"),
])
def test_bad_layer_names_are_refused(model, name, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        neuro.resolve_layer(cnnf.create_model(model), name)


def test_stimuli_become_model_inputs():
    bytes_ = np.array([0, 255], dtype=np.uint8).repeat(392).reshape(1, 1, 28, 28)
    inputs = neuro.model_inputs(bytes_, (1, 28, 28))
    assert inputs.dtype == torch.float32 and inputs.min() == -1 and inputs.max() == 1
    floats = np.full((2, 1, 28, 28), 0.25)
    assert torch.allclose(neuro.model_inputs(floats, (1, 28, 28)), torch.tensor(-0.5))
    with pytest.raises(ValueError, match=r"the model takes images of shape \(C, H, W\) = \(1, 28, 28\)"):
        neuro.model_inputs(np.zeros((2, 3, 32, 32)), (1, 28, 28))
    with pytest.raises(ValueError, match=re.escape("must be floats in [0, 1], got values in [1.5, 1.5]")):
        neuro.model_inputs(floats * 6, (1, 28, 28))


def _recordings_file(path: Path, **changes) -> Path:
    """A tiny valid recordings file (40 images of 1 x 28 x 28, 5 sites) with `changes`."""
    rng = np.random.default_rng(4)
    repetitions = rng.standard_normal((4, 40, 5))
    arrays = {"stimuli": rng.random((40, 1, 28, 28)), "responses": repetitions.mean(axis=0),
              "repetitions": repetitions, "regions": np.array(["V4", "V4", "IT", "IT", "IT"]),
              "labels": np.repeat(np.arange(4), 10)}
    arrays.update(changes)
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})
    return path


def test_load_recordings_reads_the_format(tmp_path: Path):
    recordings = neuro.load_recordings(_recordings_file(tmp_path / "r.npz"))
    assert recordings.responses.shape == (40, 5) and recordings.repetitions.shape == (4, 40, 5)
    assert recordings.region_names() == ["V4", "IT"] and recordings.sites("IT").tolist() == [False, False, True, True, True]


@pytest.mark.parametrize("changes, needle", [
    ({"responses": None}, "missing key 'responses'"),
    ({"responses": np.zeros((39, 5))}, "'responses' must be a non-empty matrix (40, columns), got shape (39, 5)"),
    ({"repetitions": np.zeros((4, 40, 6))}, "'repetitions' must be (reps >= 2, images, sites) = (reps, 40, 5)"),
    ({"regions": np.array(["V4", "IT"])}, "'regions' (one per site) must be 5 strings"),
    ({"labels": np.arange(3)}, "'labels' (one per image) must be 40 values"),
    ({"stimuli": np.full((40, 1, 28, 28), 2.0)}, "'stimuli' must be floats in [0, 1]"),
    ({"response": np.zeros((40, 5))}, "unknown key(s) response"),
    ({"labels": np.array([object()] * 40)}, "key 'labels' holds Python objects"),
])
def test_load_recordings_names_the_file_and_the_key(tmp_path: Path, changes, needle):
    path = _recordings_file(tmp_path / "r.npz", **changes)
    with pytest.raises(neuro.RecordingsError) as error:
        neuro.load_recordings(path)
    assert str(error.value).startswith(f"recordings file {path}") and needle in str(error.value)


def test_load_recordings_refuses_a_file_that_is_not_npz(tmp_path: Path):
    (tmp_path / "r.npz").write_text("not a zip")
    with pytest.raises(neuro.RecordingsError, match="is not an .npz file"):
        neuro.load_recordings(tmp_path / "r.npz")


def test_the_command_writes_scores_per_layer_and_step(tmp_path: Path, capsys, one_thread):
    out = tmp_path / "out" / "scores.json"
    args = ["neural-predictivity", "--pretrained", "cnnf5_fmnist", "--recordings", str(_recordings_file(tmp_path / "r.npz")),
            "--components", "2", "--splits", "2", "--layers", "block2,block3", "--iterations", "2", "--out", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["config"]["n_components"] == 2 and report["config"]["layers"] == ["block2", "block3"]
    assert set(report["ceiling"]) == {"V4", "IT"} and len(report["ceiling"]["IT"]["per_site"]) == 3
    keys = [(row["region"], row["layer"], row["t"]) for row in report["scores"]]
    assert sorted(keys) == sorted((r, layer, t) for r in ("V4", "IT") for layer in ("block2", "block3") for t in range(3))
    assert all(len(row["split_medians"]) == 2 and row["ceiled"] is not None for row in report["scores"])
    assert "t=2" in capsys.readouterr().out


@pytest.mark.parametrize("flag, value, needle", [
    ("--components", "0", "argument --components: expected an integer >= 1, got '0'"),
    ("--layers", "block1,conv2", "argument --layers: expected a layer index (e.g. 3) or a block output"),
    ("--layers", "block9", "layer 'block9': the model has blocks 1..4"),
    ("--recordings", "missing.npz", "argument --recordings: no file missing.npz"),
])
def test_the_command_refuses_bad_arguments(tmp_path: Path, capsys, flag, value, needle):
    args = {"--recordings": str(_recordings_file(tmp_path / "r.npz")), "--out": str(tmp_path / "s.json"), flag: value}
    assert main(["neural-predictivity", "--pretrained", "cnnf5_fmnist", *[a for item in args.items() for a in item]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnnf: error: ") and "\n" not in err and needle in err, err
    assert not (tmp_path / "s.json").exists()
