"""cnnf.fast.allocator: freed feature maps stay in the process (no page faults on the next step)."""

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc only")

PROBE = """
import sys, torch
from cnnf.fast.allocator import keep_freed_memory
if sys.argv[1] == "kept":
    assert keep_freed_memory()
def rss_mb():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmRSS"))
    return int(line.split()[1]) / 1024
maps = torch.ones(int(sys.argv[2]), 32, 28, 28)  # 100 KB per image: one CNN-F feature map
held = rss_mb()
del maps
print(held - rss_mb())
"""


def _released_mb(mode: str, batch: int) -> float:
    done = subprocess.run([sys.executable, "-c", PROBE, mode, str(batch)], capture_output=True, text=True, check=True)
    return float(done.stdout)


@pytest.mark.parametrize("batch", [128, 400])  # 12.8 MB, and 40 MB: above glibc's largest mmap threshold
def test_a_freed_feature_map_stays_resident_only_when_kept(batch):
    assert _released_mb("default", batch) > 10  # glibc hands a block this large back to the OS
    assert _released_mb("kept", batch) < 1
