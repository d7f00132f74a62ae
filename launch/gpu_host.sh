#!/bin/bash
# Training on one host with several GPUs: one process drives them all (the
# mesh spans every visible GPU; no jax.distributed needed).
#
#   launch/gpu_host.sh --config=configs/coco_rn50_bert.py --workdir=/data/runs/rn50
#
# CUDA_VISIBLE_DEVICES picks the GPUs. `exec` hands SIGTERM straight to
# Python, which saves a checkpoint at the current step and exits 0; the same
# command resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -f .venv/bin/activate ]]; then . .venv/bin/activate; fi
# Overlap the gradient all-reduce with the backward pass; let XLA take most
# of each GPU's memory up front instead of growing it.
export XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true ${XLA_FLAGS:-}"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
exec python -m cliplite_jax.main "$@"
