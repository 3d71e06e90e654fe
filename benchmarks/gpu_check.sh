#!/usr/bin/env bash
# The GPU checks as one script, for a machine with an NVIDIA GPU and its own CUDA build of torch
# (the project's other dependencies installed there too): the cuda-marked tests, the backend
# comparison on the GPU's defaults, and a throughput report. Results go to $OUT (default
# benchmarks/results).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --no-deps -e .
python -c 'import torch; assert torch.cuda.is_available(), "no CUDA GPU visible"; print(torch.cuda.get_device_name())'
python -m pytest -q -p no:cacheprovider -m cuda
python benchmarks/throughput.py --device cuda --out "${OUT:-benchmarks/results}"
python benchmarks/throughput.py --device cuda --precision bf16 --out "${OUT:-benchmarks/results}"
