"""Keep freed memory in the process instead of handing it back to the OS (glibc malloc).

CNN-F allocates and frees feature maps of 10-20 MB many times per step. By default glibc
serves blocks that large with a fresh `mmap` (and returns them with `munmap`), or trims the
heap when its free top grows, so every new map is page-faulted in again: measured on the
2-core development machine, CNN-F-5 inference (batch 128) in a fresh process ran 1.19-1.27x
faster with that turned off (benchmarks/README.md, "Allocator"). PyTorch's CPU tuning guide makes the same point by
recommending jemalloc or tcmalloc; this is the same effect with the allocator already loaded.

The cost: the process's resident memory stays at its peak instead of shrinking between steps.
The library never calls this on import; the `cnnf` command and the benchmark do.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1


def keep_freed_memory() -> bool:
    """Serve every block from the heap (no mmap) and never trim it. True if applied; False
    where the C library is not glibc (macOS, musl), which is then left as it is.

    Not just a higher mmap threshold: glibc caps it at 32 MB, and a batch of 250 (the sweeps'
    default) has 37 MB feature maps, which then cost page faults on every allocation (an
    end-to-end CNN-F-5 gradient of 250 images was 8 % slower that way)."""
    path = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(path).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
