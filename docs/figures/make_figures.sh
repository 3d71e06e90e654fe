#!/usr/bin/env bash
# Figure 9 of the paper for a shipped model (default: cnnf5_fmnist): recompute each record
# (FIGURE.npz) and draw it (FIGURE.png) in docs/figures. What they show: docs/VIZ.md.
# Usage: docs/figures/make_figures.sh [MODEL]   (about 10 minutes on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
MODEL=${1:-cnnf5_fmnist}
OUT=docs/figures
cnnf() { "$PYTHON" -m cnnf.cli "$@"; }

cnnf viz restoration "$MODEL" --images 0,1,2 --mean-over 1000 --out "$OUT/restoration.png"
cnnf viz gradcam "$MODEL" --pool 1000 --show 2 --out "$OUT/gradcam.png"
cnnf viz cells "$MODEL" --image 0 --out "$OUT/cells.png"
