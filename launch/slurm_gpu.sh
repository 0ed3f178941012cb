#!/usr/bin/env bash
# Multi-node GPU training under Slurm: one process per node, all of the node's GPUs in it; jax.distributed
# reads the coordinator, process count and index from Slurm's environment.
#   sbatch --nodes=4 --gpus-per-node=8 launch/slurm_gpu.sh configs/vit_b16_elip.py /shared/runs/b16 \
#          --config.mesh.fsdp=8
# WORKDIR must be on a filesystem every node sees. Install jax with CUDA in .venv first
# (./launch/setup_env.sh, then .venv/bin/pip install 'jax[cuda12]==0.10.2', the jax of requirements/runtime.txt).
#SBATCH --job-name=elip_jax
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --output=slurm-%j.out
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: sbatch [options] $0 CONFIG WORKDIR [flags...]" >&2; exit 2; }
config="$1"; workdir="$2"; shift 2
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
srun --kill-on-bad-exit=1 .venv/bin/python -m elip_jax.train --config "$config" --workdir "$workdir" "$@"
