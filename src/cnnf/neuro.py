"""Neural predictivity (Brain-Score's protocol): how well a linear map of a layer's
activations, at every feedback iteration, predicts recorded neural responses.

Per (layer, step t): PLS regression (25 components, `scale=False`) from the activations of
90 % of the images to every recording site at once, Pearson r per site on the other 10 %,
over 10 random splits stratified by object label. The score is the median over sites,
averaged over splits (mean +- s.e.m.); with repeated presentations it is also divided by the
split-half internal-consistency ceiling. Recordings are read from an `.npz` file
(`load_recordings`; the format and a converter note: docs/DESIGN.md, "Neural predictivity").
"""

from __future__ import annotations

import math
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.cross_decomposition import PLSRegression
from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit
from torch import Tensor

from cnnf.data import to_model_range
from cnnf.device import device_of
from cnnf.layers import tensor_of
from cnnf.model import CNNF

TEST_SIZE = 0.1
MIN_TEST_IMAGES = 3
KEYS = ("stimuli", "responses", "repetitions", "regions", "labels")


class RecordingsError(ValueError):
    """A recordings file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True, eq=False)
class Recordings:
    """Neural recordings of a stimulus set (the `.npz` format, docs/DESIGN.md).

    stimuli:     (images, C, H, W) uint8 or floats in [0, 1].
    responses:   (images, sites) float64, mean response of each site to each image.
    repetitions: (reps, images, sites) float64 single presentations, NaN where an image was
                 shown fewer times; None if not recorded.
    regions:     (sites,) str, e.g. "V4" / "IT"; None: one region.
    labels:      (images,) object label of each image, for stratified splits; None: plain splits.
    """

    stimuli: np.ndarray
    responses: np.ndarray
    repetitions: np.ndarray | None = None
    regions: np.ndarray | None = None
    labels: np.ndarray | None = None

    def region_names(self) -> list[str]:
        """The regions in order of first appearance; ["all"] without region labels."""
        return ["all"] if self.regions is None else list(dict.fromkeys(self.regions.tolist()))

    def sites(self, region: str) -> np.ndarray:
        """(sites,) bool, the sites of `region`."""
        if self.regions is None:
            return np.ones(self.responses.shape[1], dtype=bool)
        return self.regions == region


@dataclass(frozen=True, eq=False)
class Ceiling:
    """Split-half internal consistency, Spearman-Brown corrected.

    r: (splits, sites), one random halving of the repetitions per row.
    """

    r: np.ndarray

    @property
    def per_site(self) -> np.ndarray:
        """(sites,) mean over splits."""
        return self.r.mean(axis=0)

    @property
    def value(self) -> float:
        """Brain-Score's ceiling: the median over sites of each split, averaged over splits."""
        return float(np.median(self.r, axis=1).mean())

    def to_plain(self) -> dict:
        return {"value": self.value, "per_site": self.per_site.tolist()}


@dataclass(frozen=True, eq=False)
class Predictivity:
    """Held-out Pearson r of a PLS map from features to responses.

    r: (splits, sites), r per split and recording site on the split's test images.
    n_components: PLS components used. ceiling: None without repetitions.

    Conventions (Brain-Score's): `score` is the median over sites of each split, averaged over
    splits; `sem` is their standard deviation (ddof 0) / sqrt(splits); `ceiled` is
    score / ceiling.value (median r, then divided by the median ceiling), `ceiled_sem` likewise.
    """

    r: np.ndarray
    n_components: int
    ceiling: Ceiling | None = None

    @property
    def per_site(self) -> np.ndarray:
        """(sites,) mean r over splits."""
        return self.r.mean(axis=0)

    @property
    def split_medians(self) -> np.ndarray:
        """(splits,) median r over sites."""
        return np.median(self.r, axis=1)

    @property
    def score(self) -> float:
        return float(self.split_medians.mean())

    @property
    def sem(self) -> float:
        return float(self.split_medians.std() / math.sqrt(len(self.r)))

    @property
    def ceiled(self) -> float | None:
        return None if self.ceiling is None else self.score / self.ceiling.value

    @property
    def ceiled_sem(self) -> float | None:
        return None if self.ceiling is None else self.sem / self.ceiling.value

    def to_plain(self) -> dict:
        """The record as JSON-ready plain data (r: splits x sites)."""
        return {"score": self.score, "sem": self.sem, "ceiled": self.ceiled, "ceiled_sem": self.ceiled_sem,
                "split_medians": self.split_medians.tolist(), "per_site": self.per_site.tolist(),
                "r": self.r.tolist(), "n_components": self.n_components}


def neural_predictivity(features: np.ndarray, responses: np.ndarray, labels: np.ndarray | None = None,
                        repetitions: np.ndarray | None = None, n_components: int = 25, splits: int = 10,
                        seed: int = 0) -> Predictivity:
    """Neural predictivity of `features` (images, dims) for `responses` (images, sites).

    One PLS regression (n_components, scale=False, float64) per split maps the training images'
    features to all sites at once (as Brain-Score does; the paper says one model per site);
    Pearson r per site on the test images. Splits: `image_splits(images, labels, splits, seed)`.
    repetitions (reps, images, sites), if given, yield the ceiling (`split_half_ceiling`).
    """
    features, responses = _matrix(features, "features"), _matrix(responses, "responses")
    if len(features) != len(responses):
        raise ValueError(f"features and responses must have one row per image, got {len(features)} and {len(responses)}")
    constant = np.flatnonzero(responses.std(axis=0) == 0)
    if constant.size:
        raise ValueError(f"responses of site(s) {constant[:5].tolist()} do not vary across images; drop them")
    folds = image_splits(len(features), labels, splits, seed)
    largest = min(features.shape[1], len(folds[0][0]))
    if not 1 <= n_components <= largest:
        raise ValueError(f"n_components must be in 1..{largest} (the feature dimensions and training images), "
                         f"got {n_components}")
    r = np.stack([_held_out_r(features, responses, train, test, n_components) for train, test in folds])
    ceiling = None if repetitions is None else split_half_ceiling(_repetitions(repetitions, responses.shape), seed, splits)
    return Predictivity(r, n_components, ceiling)


def image_splits(images: int, labels: np.ndarray | None = None, splits: int = 10,
                 seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """`splits` random (train, test) index pairs, 90 % / 10 % of the images; stratified by
    `labels` (images,) with StratifiedShuffleSplit, else ShuffleSplit."""
    if isinstance(splits, bool) or not isinstance(splits, int) or splits < 1:
        raise ValueError(f"splits must be an integer >= 1, got {splits!r}")
    if math.ceil(TEST_SIZE * images) < MIN_TEST_IMAGES:
        raise ValueError(f"10 % test splits of {images} images are too small for Pearson r "
                         f"(at least {MIN_TEST_IMAGES} images each); give more images")
    options = dict(n_splits=splits, test_size=TEST_SIZE, random_state=seed)
    if labels is None:
        return list(ShuffleSplit(**options).split(np.zeros(images)))
    labels = np.asarray(labels)
    if labels.shape != (images,):
        raise ValueError(f"labels must have one entry per image ({images},), got shape {labels.shape}")
    return list(StratifiedShuffleSplit(**options).split(np.zeros(images), labels))


def split_half_ceiling(repetitions: np.ndarray, seed: int = 0, splits: int = 10) -> Ceiling:
    """Internal consistency of repetitions (reps, images, sites), NaN where not shown.

    Per split: a random half of the repetitions against the rest, Pearson r per site between the
    two halves' mean responses across images, Spearman-Brown corrected to the full count:
    2r / (1 + r).
    """
    repetitions = np.asarray(repetitions, dtype=np.float64)
    if repetitions.ndim != 3 or len(repetitions) < 2:
        raise ValueError(f"repetitions must be (reps >= 2, images, sites), got shape {repetitions.shape}")
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(splits):
        order = rng.permutation(len(repetitions))
        half = len(order) // 2
        r = pearson(_mean(repetitions[order[:half]]), _mean(repetitions[order[half:]]))
        rows.append(2 * r / (1 + r))
    return Ceiling(np.stack(rows))


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r per column of a and b (images, sites), over the images where both are not NaN."""
    valid = ~(np.isnan(a) | np.isnan(b))
    count = valid.sum(axis=0)
    da = np.where(valid, a - np.where(valid, a, 0).sum(axis=0) / count, 0)
    db = np.where(valid, b - np.where(valid, b, 0).sum(axis=0) / count, 0)
    return (da * db).sum(axis=0) / np.sqrt((da ** 2).sum(axis=0) * (db ** 2).sum(axis=0))


def model_features(model: CNNF, stimuli: Tensor, layers: Sequence[str] | None = None, iterations: int | None = None,
                   batch_size: int = 250) -> dict[tuple[str, int], np.ndarray]:
    """Activations {(layer, t): (images, features) float64} for t = 0..iterations (default the
    model's N) of `stimuli` (images, C, H, W) in [-1, 1]; t = 0 is the plain feedforward pass.

    layers: names from `resolve_layer` (default `block_layers(model)`).
    """
    names = list(layers or block_layers(model))
    index = {name: resolve_layer(model, name) for name in names}
    parts: dict[tuple[str, int], list[np.ndarray]] = {}
    with torch.no_grad():
        for batch in stimuli.split(batch_size):
            run = model.infer(batch.to(device_of(model)), iterations=iterations, keep_activations=True)
            for t, outputs in enumerate(run.activations):
                for name in names:
                    parts.setdefault((name, t), []).append(tensor_of(outputs[index[name]]).flatten(1).double().cpu().numpy())
    return {key: np.concatenate(chunks) for key, chunks in parts.items()}


def resolve_layer(model: CNNF, name: str) -> int:
    """The index in `model.layers` of `name`: "blockB" (block B's output, B >= 1) or a layer
    index "i"; it must lie at or above the reconstructed layer k, whose activations every step
    recomputes."""
    check_layer_name(name)
    last = len(model.layers) - 1
    if name.startswith("block"):
        block = int(name[5:])
        if not 1 <= block < len(model.block_ends):
            raise ValueError(f"layer {name!r}: the model has blocks 1..{len(model.block_ends) - 1}")
        index = model.block_ends[block] - 1
    else:
        index = int(name)
        if index > last:
            raise ValueError(f"layer {name!r}: the model has layers 0..{last}")
    lowest = model.block_ends[model.reconstruct_to]
    if index < lowest:
        raise ValueError(f"layer {name!r} lies below the reconstructed layer k = {model.reconstruct_to}; "
                         f"feedback recomputes layers {lowest}..{last} (block{model.reconstruct_to + 1} and up)")
    return index


def check_layer_name(name: str) -> str:
    """A layer name: "blockB" or a layer index; returns it."""
    if not re.fullmatch(r"block\d+|\d+", name):
        raise ValueError(f"expected a layer index (e.g. 3) or a block output (e.g. block2), got {name!r}")
    return name


def block_layers(model: CNNF) -> list[str]:
    """The block outputs that feedback recomputes, below the logits: block k+1 .. block L-1."""
    return [f"block{b}" for b in range(model.reconstruct_to + 1, len(model.block_ends) - 1)]


def model_inputs(stimuli: np.ndarray, input_shape: Sequence[int]) -> Tensor:
    """Stimuli (images, C, H, W), uint8 or floats in [0, 1], as float32 model inputs in [-1, 1]."""
    _check_stimuli(stimuli, "stimuli")
    if tuple(stimuli.shape[1:]) != tuple(input_shape):
        raise ValueError(f"the model takes images of shape (C, H, W) = {tuple(input_shape)}, the stimuli are "
                         f"{tuple(stimuli.shape[1:])}; convert them when building the recordings file")
    if stimuli.dtype == np.uint8:
        return to_model_range(torch.from_numpy(stimuli))
    return torch.from_numpy(2 * stimuli.astype(np.float32) - 1)


def score_model(model: CNNF, recordings: Recordings, layers: Sequence[str] | None = None,
                iterations: int | None = None, n_components: int = 25, splits: int = 10, seed: int = 0,
                batch_size: int = 250) -> list[dict]:
    """Neural predictivity of every layer at every step t = 0..iterations (default N), per
    region: rows {"region", "layer", "t", **Predictivity.to_plain()}. One layer's features are
    held at a time (images x features x (N + 1) float64 values)."""
    images = model_inputs(recordings.stimuli, model.input_shape)
    names = list(layers or block_layers(model))
    for name in names:
        resolve_layer(model, name)
    rows = []
    for layer in names:
        features = model_features(model, images, [layer], iterations, batch_size)
        for (_, t), values in features.items():
            for region in recordings.region_names():
                sites = recordings.sites(region)
                repetitions = None if recordings.repetitions is None else recordings.repetitions[:, :, sites]
                result = neural_predictivity(values, recordings.responses[:, sites], recordings.labels, repetitions,
                                             n_components, splits, seed)
                rows.append({"region": region, "layer": layer, "t": t, **result.to_plain()})
    return rows


def ceilings(recordings: Recordings, splits: int = 10, seed: int = 0) -> dict[str, dict | None]:
    """{region: Ceiling.to_plain()}, None per region without repetitions; the ceilings that
    `score_model` divides by with the same splits and seed."""
    if recordings.repetitions is None:
        return {region: None for region in recordings.region_names()}
    return {region: split_half_ceiling(recordings.repetitions[:, :, recordings.sites(region)], seed, splits).to_plain()
            for region in recordings.region_names()}


def format_scores(rows: list[dict], ceiling: dict[str, dict | None]) -> str:
    """A table per region: a row per (model, layer), a column per step t; median r +- s.e.m.,
    and the ceiled score in brackets where there is a ceiling."""
    lines = []
    for region, value in ceiling.items():
        mine = [row for row in rows if row["region"] == region]
        steps = sorted({row["t"] for row in mine})
        sites = len(mine[0]["per_site"]) if mine else 0
        lines.append(f"{region}: {sites} sites, ceiling " + (f"{value['value']:.3f}" if value else "none (no repetitions)")
                     + "; median r over sites +- s.e.m. over splits (ceiled); t = 0 is the feedforward pass")
        lines.append(f"{'model':<8}{'layer':<8}" + "".join(f"  {f't={t}':>22}" for t in steps))
        for source, layer in dict.fromkeys((row.get("model", ""), row["layer"]) for row in mine):
            cells = {row["t"]: row for row in mine if row.get("model", "") == source and row["layer"] == layer}
            lines.append(f"{source:<8}{layer:<8}" + "".join(f"  {_cell(cells.get(t)):>22}" for t in steps))
    return "\n".join(lines)


def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    ceiled = f" ({row['ceiled']:.3f})" if row["ceiled"] is not None else ""
    return f"{row['score']:.3f}+-{row['sem']:.3f}{ceiled}"


def load_recordings(path: str | Path) -> Recordings:
    """Recordings from an `.npz` file (docs/DESIGN.md); RecordingsError names the file and key."""
    path, source = Path(path), f"recordings file {path}"
    if not path.is_file():
        raise RecordingsError(f"{source} not found; check the path")
    if not zipfile.is_zipfile(path):
        raise RecordingsError(f"{source} is not an .npz file (write it with numpy.savez)")
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                try:
                    arrays[key] = archive[key]
                except ValueError:
                    raise RecordingsError(f"{source}: key '{key}' holds Python objects; store text as fixed-width "
                                          "strings, e.g. np.array(names, dtype=str)") from None
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise RecordingsError(f"{source} cannot be read ({type(error).__name__}: {error})") from None
    return _recordings(arrays, source)


def _recordings(arrays: dict[str, np.ndarray], source: str) -> Recordings:
    """The checked record of an .npz file's arrays."""
    unknown = sorted(set(arrays) - set(KEYS))
    if unknown:
        raise RecordingsError(f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(KEYS)}")
    for key in ("stimuli", "responses"):
        if key not in arrays:
            raise RecordingsError(f"{source}: missing key '{key}' (the format: docs/DESIGN.md, Neural predictivity)")
    try:
        _check_stimuli(arrays["stimuli"], "'stimuli'")
        images = len(arrays["stimuli"])
        responses = _matrix(arrays["responses"], "'responses'", rows=images)
        sites = responses.shape[1]
        repetitions = arrays.get("repetitions")
        if repetitions is not None:
            repetitions = _repetitions(repetitions, (images, sites), "'repetitions'")
        regions = _vector(arrays.get("regions"), sites, "'regions' (one per site)", text=True)
        labels = _vector(arrays.get("labels"), images, "'labels' (one per image)")
    except ValueError as error:
        raise RecordingsError(f"{source}: {error}") from None
    return Recordings(arrays["stimuli"], responses, repetitions, regions, labels)


def _check_stimuli(stimuli: np.ndarray, what: str) -> None:
    """(images, C, H, W), uint8 or finite floats in [0, 1]."""
    if stimuli.ndim != 4 or not len(stimuli):
        raise ValueError(f"{what} must be images (images, C, H, W), got shape {stimuli.shape}")
    if stimuli.dtype == np.uint8:
        return
    if not np.issubdtype(stimuli.dtype, np.floating):
        raise ValueError(f"{what} must be uint8 or floats in [0, 1], got dtype {stimuli.dtype}")
    if not np.isfinite(stimuli).all() or stimuli.min() < 0 or stimuli.max() > 1:
        raise ValueError(f"{what} must be floats in [0, 1], got values in [{stimuli.min():.4g}, {stimuli.max():.4g}]")


def _matrix(values: np.ndarray, what: str, rows: int | None = None) -> np.ndarray:
    """(rows, columns) finite float64."""
    values = np.asarray(values)
    if values.ndim != 2 or (rows is not None and len(values) != rows) or not values.size:
        expected = f"({rows if rows is not None else 'images'}, columns)"
        raise ValueError(f"{what} must be a non-empty matrix {expected}, got shape {values.shape}")
    if not np.issubdtype(values.dtype, np.number) or not np.isfinite(values).all():
        raise ValueError(f"{what} must hold finite numbers")
    return values.astype(np.float64, copy=False)


def _repetitions(values: np.ndarray, shape: tuple[int, int], what: str = "repetitions") -> np.ndarray:
    """(reps >= 2, *shape) float64; NaN marks a missing presentation."""
    values = np.asarray(values)
    if values.ndim != 3 or len(values) < 2 or values.shape[1:] != tuple(shape):
        raise ValueError(f"{what} must be (reps >= 2, images, sites) = (reps, {shape[0]}, {shape[1]}), "
                         f"got shape {values.shape}")
    if not np.issubdtype(values.dtype, np.number) or np.isinf(values).any():
        raise ValueError(f"{what} must hold numbers (NaN for a missing presentation)")
    return values.astype(np.float64)


def _vector(values: np.ndarray | None, length: int, what: str, text: bool = False) -> np.ndarray | None:
    if values is None:
        return None
    if values.shape != (length,) or (text and values.dtype.kind != "U"):
        kind = "strings" if text else "values"
        raise ValueError(f"{what} must be {length} {kind}, got shape {values.shape} and dtype {values.dtype}")
    return values


def _held_out_r(features: np.ndarray, responses: np.ndarray, train: np.ndarray, test: np.ndarray,
                n_components: int) -> np.ndarray:
    """(sites,) Pearson r on the test images of PLS fitted on the training images."""
    pls = PLSRegression(n_components=n_components, scale=False).fit(features[train], responses[train])
    return pearson(pls.predict(features[test]), responses[test])


def _mean(repetitions: np.ndarray) -> np.ndarray:
    """(images, sites) mean over repetitions, ignoring NaN; NaN where an image has none."""
    count = (~np.isnan(repetitions)).sum(axis=0)
    total = np.nansum(repetitions, axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)
