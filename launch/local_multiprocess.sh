#!/bin/bash
# N training processes on this machine, each with its own faked CPU devices,
# joined through jax.distributed over gloo: a multi-host run in miniature.
#
#   launch/local_multiprocess.sh N --config=configs/default.py --workdir=/tmp/mp [--config.x=...]
#
# DEVICES_PER_PROCESS (default 2) CPU devices per process; PORT (default: a
# free one) for the coordinator. Process 0's output is shown; process i's goes
# to WORKDIR/process_i.log. If one process fails the others are stopped and
# the script exits with the failing status. SIGTERM/SIGINT are forwarded to
# every process, which save a checkpoint at the same step and exit 0.
set -euo pipefail
if [[ $# -lt 1 || ! $1 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NUM_PROCESSES --config=... --workdir=... [flags]" >&2
  exit 2
fi
num=$1
shift
workdir=""
for arg in "$@"; do
  if [[ $arg == --workdir=* ]]; then workdir=${arg#--workdir=}; fi
done
if [[ -z $workdir ]]; then
  echo "$0: error: --workdir=... is required" >&2
  exit 2
fi
mkdir -p "$workdir"
cd "$(dirname "$0")/.."
devices=${DEVICES_PER_PROCESS:-2}
port=${PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

pids=()
for ((i = 0; i < num; i++)); do
  log=/dev/stdout
  if ((i > 0)); then log=$workdir/process_$i.log; fi
  XLA_FLAGS="--xla_force_host_platform_device_count=$devices ${XLA_FLAGS:-}" \
    JAX_PLATFORMS=cpu \
    python -m cliplite_jax.main --coordinator_address="127.0.0.1:$port" \
      --num_processes="$num" --process_id="$i" "$@" >"$log" 2>&1 &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' TERM INT

status=0
declare -A finished=()
while ((${#finished[@]} < num)); do
  for i in "${!pids[@]}"; do
    if [[ -n ${finished[$i]:-} ]] || kill -0 "${pids[$i]}" 2>/dev/null; then
      continue
    fi
    code=0
    wait "${pids[$i]}" || code=$?
    finished[$i]=1
    if ((code != 0 && status == 0)); then
      status=$code
      echo "$0: process $i exited with status $code; stopping the others" \
           "(logs: $workdir/process_*.log)" >&2
      # The rest would wait forever in a collective; the last checkpoint
      # on disk is complete (saves commit atomically).
      kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
  done
  sleep 1
done
exit $status
