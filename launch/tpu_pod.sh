#!/usr/bin/env bash
# Runs the same training command on every worker of a TPU VM pod slice; jax.distributed finds the peers
# from the TPU environment. The repository must be at the same path on every worker (clone it there first).
#   ./launch/tpu_pod.sh TPU_NAME ZONE configs/vit_b16_elip.py /mnt/shared/run [--config.KEY=VALUE ...]
# WORKDIR must be a POSIX path that every worker sees (NFS, Filestore, a gcsfuse mount): Orbax writes one
# checkpoint from all of them. REPO_DIR (default: elip_jax in the workers' home) is where the clone lives.
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [flags...]" >&2; exit 2; }
tpu="$1"; zone="$2"; config="$3"; workdir="$4"; shift 4
repo="${REPO_DIR:-\$HOME/elip_jax}"  # expanded on the workers
flags=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  set -e; cd $repo
  ./launch/setup_env.sh
  .venv/bin/pip install -q 'jax[tpu]==0.10.2' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
  .venv/bin/python -m elip_jax.train --config $config --workdir $workdir $flags"
