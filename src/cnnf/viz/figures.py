"""Records to figures: save a record beside its figure and draw it, or redraw a saved record."""

from __future__ import annotations

from pathlib import Path

from cnnf.viz.cells import plot_cells
from cnnf.viz.common import Record, RecordError, record_kind
from cnnf.viz.gradcam import plot_gradcam
from cnnf.viz.restoration import plot_restoration

PLOTS = {"restoration": plot_restoration, "gradcam": plot_gradcam, "cells": plot_cells}
"""Record kind -> the function that draws it: (record .npz, figure file) -> figure file."""


def draw(record: Record, figure: Path) -> Path:
    """Save `record` as FIGURE.npz (the figure's name, suffix .npz) and draw it to `figure`."""
    return PLOTS[record.kind](record.save(Path(figure).with_suffix(".npz")), figure)


def redraw(record_path: Path, figure: Path) -> Path:
    """Draw the saved record at `record_path` (any kind) to `figure`."""
    kind = record_kind(record_path)
    if kind not in PLOTS:
        raise RecordError(f"{record_path} holds a {kind!r} record, which no plot draws; known kinds: {', '.join(PLOTS)}")
    return PLOTS[kind](record_path, figure)
