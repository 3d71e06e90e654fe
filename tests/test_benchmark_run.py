"""benchmarks/run.py's ceiling kernels: the same convolution on inputs at several addresses."""

import sys
from pathlib import Path

import pytest
import torch

import cnnf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from run import PLACEMENTS, conv_kernels, placed_copies  # noqa: E402


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_placed_copies_keep_values_and_strides_at_distinct_addresses(layout):
    t = torch.randn(3, 4, 5, 6).contiguous(memory_format=layout)
    copies = placed_copies(t, 4)
    assert all(torch.equal(c, t) and c.stride() == t.stride() for c in copies)
    assert len({c.data_ptr() % 65536 for c in copies}) == 4  # different places within a 64 KB window
    assert all(c.data_ptr() % 64 == copies[0].data_ptr() % 64 for c in copies)  # 64-byte steps


def test_ceiling_kernels_count_every_placement(monkeypatch):
    model = cnnf.create_model("conv4_mnist")
    calls = []
    original = torch.nn.functional.conv2d
    monkeypatch.setattr(torch.nn.functional, "conv2d",
                        lambda *args, **kwargs: calls.append(args[0].data_ptr()) or original(*args, **kwargs))
    kernels = conv_kernels(model, torch.channels_last, batch=2)
    kernels["forward"][0]()
    monkeypatch.undo()
    assert len(set(calls)) == len(calls) == PLACEMENTS
    macs = 28 * 28 * 32 * 32 * 9  # conv4_mnist's largest convolution, per image
    assert kernels["forward"][1] == pytest.approx(PLACEMENTS * 2 * macs * 2 / 1e9)
    assert kernels["forward_backward"][1] == pytest.approx(3 * kernels["forward"][1])
