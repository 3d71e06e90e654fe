#!/bin/bash
# Train a cnnf run on several nodes with SLURM: one torchrun per node, one process per GPU
# (docs/SCALING.md). Submit from the repository with its environment active:
#
#   sbatch --nodes 2 scripts/slurm_train.sh configs/cnnf5_fmnist.yaml runs/cnnf5_2nodes [--precision bf16 ...]
#
# The same command resumes the run once RUN_DIR holds one (after a time limit or a requeue);
# the extra arguments apply to a new run only. RUN_DIR and the data must be on a file system
# that every node sees.
#SBATCH --job-name=cnnf
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=04:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

CONFIG=${1:?usage: sbatch scripts/slurm_train.sh CONFIG.yaml RUN_DIR [cnnf train arguments]}
RUN_DIR=${2:?usage: sbatch scripts/slurm_train.sh CONFIG.yaml RUN_DIR [cnnf train arguments]}
GPUS=${SLURM_GPUS_ON_NODE:-8}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
THREADS=$(( SLURM_CPUS_PER_TASK / GPUS ))
export OMP_NUM_THREADS=$(( THREADS > 0 ? THREADS : 1 ))

if [ -f "$RUN_DIR/config.yaml" ]; then
    RUN=(--resume "$RUN_DIR")
else
    RUN=(--config "$CONFIG" --out "$RUN_DIR" "${@:3}")
fi

srun torchrun --nnodes "$SLURM_JOB_NUM_NODES" --nproc-per-node "$GPUS" \
    --rdzv-id "$SLURM_JOB_ID" --rdzv-backend c10d --rdzv-endpoint "$HEAD:29500" \
    -m cnnf train "${RUN[@]}" --device cuda
