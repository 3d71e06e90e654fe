"""benchmarks/run.py: the ceiling kernels (the same convolution on inputs at several addresses)
and the steal time that tells a slow row on a shared virtual machine."""

import sys
from pathlib import Path

import pytest
import torch

import cnnf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from run import PLACEMENTS, conv_kernels, cpu_counters, load_warnings, placed_copies, steal_fraction  # noqa: E402


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_placed_copies_keep_values_and_strides_at_distinct_addresses(layout):
    t = torch.randn(3, 4, 5, 6).contiguous(memory_format=layout)
    copies = placed_copies(t, 4)
    assert all(torch.equal(c, t) and c.stride() == t.stride() for c in copies)
    offsets = [c.storage_offset() for c in copies]  # where each copy starts in its own fresh buffer
    assert len(set(offsets)) == 4 and all(o % 16 == 0 and o < 16384 for o in offsets)  # 64-byte steps within 64 KB
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


def test_steal_fraction_is_the_stolen_share_of_the_cpu_time_between_two_readings():
    assert steal_fraction((10, 1000), (40, 1200)) == pytest.approx(0.15)
    assert steal_fraction((10, 1000), (10, 1000)) is None  # no time passed
    assert steal_fraction(None, (10, 1000)) is None  # no /proc/stat
    if Path("/proc/stat").exists():
        first = cpu_counters()
        sum(range(10**6))
        second = cpu_counters()
        assert 0 <= first[0] <= first[1] and second[1] >= first[1] and second[0] >= first[0]


def test_a_run_with_much_steal_time_is_flagged():
    machine = {"load_average_start": [0.0, 0.0, 0.0], "threads": 2, "cpus_available": 2}
    assert load_warnings({**machine, "steal_fraction": 0.01}) == []
    assert load_warnings({**machine, "steal_fraction": None}) == []
    assert any("steal time" in w for w in load_warnings({**machine, "steal_fraction": 0.2}))
