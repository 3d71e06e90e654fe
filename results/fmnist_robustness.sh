#!/usr/bin/env bash
# Robustness of the shipped Fashion-MNIST models (issue 4). Run from the repository root after
# `make setup`; each command writes results/NAME.json, NAME.png and NAME.txt (table + sanity checks).
# Times on 2 CPU cores are in results/README.md. Pass a step number to run only that step.
# An interrupted step resumes where it stopped when it is run again (NAME.progress.pt).
set -euo pipefail
cnnf=.venv/bin/cnnf
EPS=0,0.05,0.1,0.15,0.2,0.25,0.3
ONLY=${1:-}
EXTRA=("${@:2}")  # more `cnnf evaluate` options for the step, e.g. --merge FILE
step() { [[ -z "$ONLY" || "$ONLY" == "$1" ]]; }

# 1. CNN-F-5: FGSM and PGD-40, transfer from the first pass and end to end, first 1000 test images
if step 1; then $cnnf evaluate --pretrained cnnf5_fmnist --attacks fgsm,pgd40 --targets first,e2e --eps $EPS \
    --iterations 0,1,2,5 --subset 1000 --out results/cnnf5_fmnist_1k.json | tee results/cnnf5_fmnist_1k.txt
fi
# 2. CNN: FGSM and PGD-40 on the full test set (for a CNN, N = 0, the first pass is the whole model)
if step 2; then $cnnf evaluate --pretrained cnn_fmnist --attacks fgsm,pgd40 --targets e2e --eps $EPS \
    --out results/cnn_fmnist_full.json | tee results/cnn_fmnist_full.txt
fi
# 3. CNN: AutoAttack (standard) at eps 0.1, first 1000 test images
if step 3; then $cnnf evaluate --pretrained cnn_fmnist --attacks autoattack --targets e2e --eps 0,0.1 \
    --subset 1000 --out results/cnn_fmnist_autoattack.json | tee results/cnn_fmnist_autoattack.txt
fi
# 4. CNN-F-5: AutoAttack (standard) at eps 0.1 on the full iterative model, first 100 test images
if step 4; then $cnnf evaluate --pretrained cnnf5_fmnist --attacks autoattack --targets e2e --eps 0,0.1 \
    --iterations 5 --subset 100 --out results/cnnf5_fmnist_autoattack.json | tee results/cnnf5_fmnist_autoattack.txt
fi
# 5. CNN-F-5: step 1 on the full test set (about 4 hours of one core of the Intel machine, most of
#    it PGD-40 e2e; see results/README.md). To use two cores, run a piece with part of the e2e eps
#    beside it and merge it, e.g.
#      cnnf evaluate ...same options... --targets e2e --eps 0.3,0.25,0.2 --out /tmp/c.json --keep-progress
#    then `bash results/fmnist_robustness.sh 5 --merge /tmp/c.progress.pt`: it attacks only what the piece did not.
if step 5; then $cnnf evaluate --pretrained cnnf5_fmnist --attacks fgsm,pgd40 --targets first,e2e --eps $EPS \
    --iterations 0,1,2,5 --out results/cnnf5_fmnist_full.json "${EXTRA[@]}" | tee results/cnnf5_fmnist_full.txt
fi
# 6. CNN-F-5: AutoAttack (standard) at eps 0.1 on the first 1000 test images (about 95 minutes on one core)
if step 6; then $cnnf evaluate --pretrained cnnf5_fmnist --attacks autoattack --targets e2e --eps 0,0.1 \
    --iterations 5 --subset 1000 --out results/cnnf5_fmnist_autoattack_1k.json | tee results/cnnf5_fmnist_autoattack_1k.txt
fi
# 7. Figure 6 style comparison of the CNN and CNN-F-5 on the full test set (reads steps 2 and 5)
if step 7; then $cnnf plot results/cnn_fmnist_full.json results/cnnf5_fmnist_full.json --out results/fig6_fmnist_full.png
fi
