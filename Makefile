# Set-up and the two README commands: `make quickstart` (main job) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
MNIST := $(HOME)/.cache/cnnf/mnist/mnist.pkl.gz

.PHONY: setup quickstart test test-all figures

setup: $(STAMP) $(FASHION) $(MNIST)

# torch==2.13.0 first: pip takes the CPU wheel from local disk (a plain `torch` pulls CUDA).
$(STAMP): pyproject.toml src/cnnf/fast/csrc/fused.cpp
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps torchattacks==3.5.1
	$(BIN)/python -c 'from cnnf.fast import kernels; kernels.build()'  # the C++ kernels (about two minutes)
	touch $(STAMP)

$(FASHION):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

$(MNIST): $(STAMP)
	$(BIN)/python -m cnnf.data fetch mnist

quickstart: setup  # train the quick CNN and CNN-F-5, then attack the shipped recipe models (README)
	$(BIN)/cnnf train --config configs/cnn_fmnist_quick.yaml --overwrite
	$(BIN)/cnnf train --config configs/cnnf5_fmnist_quick.yaml --overwrite
	$(BIN)/cnnf test runs/cnn_fmnist_quick
	$(BIN)/cnnf test runs/cnnf5_fmnist_quick
	$(BIN)/cnnf evaluate --pretrained cnn_fmnist --subset 300 --attacks pgd7 --targets first \
		--eps 0,0.05,0.1 --out runs/quickstart/cnn_fmnist.json
	$(BIN)/cnnf evaluate --pretrained cnnf5_fmnist --subset 300 --attacks pgd7 --targets first,e2e \
		--eps 0,0.05,0.1 --iterations 0,5 --out runs/quickstart/cnnf5_fmnist.json
	$(BIN)/cnnf plot runs/quickstart/cnn_fmnist.json runs/quickstart/cnnf5_fmnist.json --out runs/quickstart/robustness.png

test: setup
	$(BIN)/python -m pytest

test-all: setup
	$(BIN)/python -m pytest -m ''

figures: setup  # figure 9 for the shipped CNN-F-5 in docs/figures (docs/VIZ.md)
	PYTHON=$(BIN)/python docs/figures/make_figures.sh
