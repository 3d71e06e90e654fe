"""benchmarks/layer_times.py must time the layers of one real inference iteration, in order."""

import sys
from pathlib import Path

import torch

import cnnf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from layer_times import iteration_calls  # noqa: E402
from run import random_batch  # noqa: E402


def test_layer_calls_replay_one_iteration():
    model = cnnf.create_model("conv4_mnist").eval()
    torch.manual_seed(0)
    calls = iteration_calls(model, batch=4)
    torch.manual_seed(0)
    images, _ = random_batch(model, 4)
    with torch.inference_mode():
        run = model.infer(images, iterations=1)
        layers = range(model.block_ends[model.reconstruct_to], len(model.layers))
        assert [(d, i) for d, i, _ in calls] == [("feedback", i) for i in reversed(layers)] + [("forward", i) for i in layers]
        bottom_feedback = calls[len(layers) - 1][2]()
        top_forward, _ = calls[-1][2]()
    torch.testing.assert_close(bottom_feedback, run.feedbacks[0].features)
    torch.testing.assert_close(top_forward, run.logits[1])
