"""Which implementation computes a model: one public switch, in the spirit of timm's
`set_fused_attn`.

    "reference"  the paper's math as written: the plain torch ops of `cnnf.layers` and the
                 loops of `cnnf.model` (NCHW maps, autograd's own backwards)
    "fast"       `cnnf.fast`: the same values to rounding, faster on the CPU (fused kernels,
                 channels-last maps, drives-only feedback); the default

    cnnf.set_backend("reference")           # from now on
    with cnnf.use_backend("reference"):     # inside the block only
        logits = model(x)

The environment variable CNNF_BACKEND sets the default (e.g. CNNF_BACKEND=reference).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

BACKENDS = ("reference", "fast")

_current: str | None = None  # None: not chosen yet, CNNF_BACKEND or "fast"


def get_backend() -> str:
    """The backend in use: "reference" or "fast"."""
    global _current
    if _current is None:
        _current = _checked(os.environ.get("CNNF_BACKEND", "fast"), "CNNF_BACKEND")
    return _current


def set_backend(name: str) -> None:
    """Use backend `name` ("reference" | "fast") from now on."""
    global _current
    _current = _checked(name, "backend")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Use backend `name` inside the `with` block, then the one before it again."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def is_fast() -> bool:
    """True when the fast backend is in use."""
    return get_backend() == "fast"


def _checked(name: str, what: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{what} must be one of {', '.join(BACKENDS)}, got {name!r}")
    return name
