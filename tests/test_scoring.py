"""Scoring: what a CNN-F's prediction after t iterations is, defined once (cnnf.scoring) and
used by clean accuracy and robustness sweeps alike."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import cnnf
from cnnf.accuracy import DIAGNOSTICS, accuracy_per_iteration, trajectory_statistics
from cnnf.data import ImageSet
from cnnf.scoring import OUTPUTS, check_output, score, scores_per_step

pytestmark = pytest.mark.usefixtures("one_thread")


def _logits(steps: int = 4, batch: int = 3, classes: int = 5) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(batch, classes, generator=gen, dtype=torch.float64) for _ in range(steps)]


def test_average_after_t_is_the_mean_of_the_first_t_plus_1_logits():
    logits = _logits()
    scores = scores_per_step(logits, "average")
    assert scores.shape == (4, 3, 5)
    for t in range(4):
        assert torch.allclose(scores[t], torch.stack(logits[: t + 1]).mean(0), rtol=0, atol=1e-12)


def test_last_after_t_is_the_logits_of_step_t():
    logits = _logits()
    scores = scores_per_step(torch.stack(logits), "last")
    assert all(torch.equal(scores[t], logits[t]) for t in range(4))


def test_score_is_the_scored_logits_after_the_last_step():
    logits = _logits()
    assert torch.equal(score(logits, "last"), logits[-1])
    assert torch.allclose(score(logits, "average"), scores_per_step(logits, "average")[-1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("call", [check_output, lambda mode: scores_per_step(_logits(), mode),
                                  lambda mode: score(_logits(), mode)])
def test_unknown_output_mode_lists_the_modes(call):
    assert OUTPUTS == ("last", "average")
    with pytest.raises(ValueError, match="last, average, got 'mean'"):
        call("mean")


def _tiny_images(n: int) -> ImageSet:
    gen = torch.Generator().manual_seed(1)
    return ImageSet(torch.randint(0, 256, (n, 1, 28, 28), generator=gen, dtype=torch.uint8),
                    torch.randint(0, 10, (n,), generator=gen))


def _batched_and_whole(statistic):
    """`statistic` of a CNN-F-2 on 12 images in batches of 5, and the trajectory of all 12 at once."""
    torch.manual_seed(0)
    model = cnnf.create_model("paper_mnist", iterations=2).eval()
    images = _tiny_images(12)
    batched = statistic(model, images, iterations=2, batch_size=5)
    x, y = next(images.batches(12))
    with torch.no_grad():
        return batched, model.infer(x, iterations=2), y


def test_clean_accuracy_scores_each_step_as_scoring_defines():
    acc, run, y = _batched_and_whole(accuracy_per_iteration)
    logits = run.logits
    for mode in OUTPUTS:
        expected = (scores_per_step(logits, mode).argmax(-1) == y).double().mean(1)
        assert acc[mode] == pytest.approx(expected.tolist(), abs=1e-12)


@pytest.mark.parametrize("images, iterations, batch_size, needle", [
    (0, 1, 5, "empty image set"), (4, -1, 5, "iterations must be an integer >= 0"),
    (4, 1, 0, "batch_size must be an integer >= 1")])
def test_clean_accuracy_refuses_bad_arguments(images, iterations, batch_size, needle):
    model = cnnf.create_model("paper_mnist", iterations=1)
    with pytest.raises(ValueError, match=needle):
        accuracy_per_iteration(model, _tiny_images(images), iterations, batch_size)


def test_trajectory_diagnostics_are_the_per_step_means():
    """Cross entropy per step, and g_t against h_0 (squared error, norm ratio, cosine), averaged
    over images across uneven batches, equal the same quantities computed on the whole set."""
    stats, run, y = _batched_and_whole(trajectory_statistics)
    h = run.features[0].flatten(1)
    expected = {
        "ce": [F.cross_entropy(y_t, y).item() for y_t in run.logits],
        "rec": [F.mse_loss(g.flatten(1), h).item() for g in run.reconstructions],
        "g_norm_ratio": [(g.flatten(1).norm(dim=1) / h.norm(dim=1)).mean().item() for g in run.reconstructions],
        "g_cosine": [F.cosine_similarity(g.flatten(1), h).mean().item() for g in run.reconstructions],
    }
    assert set(DIAGNOSTICS) <= stats.keys()
    for name, values in expected.items():
        assert len(stats[name]) == len(values) and stats[name] == pytest.approx(values, rel=1e-5), name
    assert all(-1 <= c <= 1 for c in stats["g_cosine"])
