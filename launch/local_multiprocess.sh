#!/usr/bin/env bash
# N training processes on this machine, joined through jax.distributed with CPU collectives over gloo: the
# same code path as many hosts, for trying a multi-host set-up without a cluster.
#   ./launch/local_multiprocess.sh 2 configs/smoke.py /tmp/mp [--config.KEY=VALUE ...]
# Each process gets DEVICES_PER_PROCESS (default 1) fake CPU devices; logs go to WORKDIR/process_<i>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { echo "usage: $0 NUM_PROCESSES CONFIG WORKDIR [flags...]" >&2; exit 2; }
n="$1"; config="$2"; workdir="$3"; shift 3
port="${PORT:-$((20000 + RANDOM % 20000))}"
./launch/setup_env.sh
mkdir -p "$workdir"
pids=()
for ((i = 0; i < n; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-1}" JAX_PLATFORMS=cpu \
    .venv/bin/python -m elip_jax.train --config "$config" --workdir "$workdir" \
    --coordinator_address "127.0.0.1:$port" --num_processes "$n" --process_id "$i" "$@" \
    > "$workdir/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
tail -n 3 "$workdir/process_0.log"
exit $status
