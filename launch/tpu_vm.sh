#!/bin/bash
# Cloud TPU VM slices: create one, install this repository on every host,
# train with the same command on all hosts.
#
#   launch/tpu_vm.sh create TPU_NAME ZONE      # ACCELERATOR (v4-32), RUNTIME
#   launch/tpu_vm.sh setup  TPU_NAME ZONE      # copy this checkout, pip install
#   launch/tpu_vm.sh train  TPU_NAME ZONE --config=configs/coco_rn50_bert.py \
#       --workdir=gs://BUCKET/runs/rn50
#
# The workdir must be reachable from every host: a gs:// path (Orbax, the
# metrics and the tokenizer all write through it) or a shared filesystem.
# Each host runs launch/tpu_vm_worker.sh, which `exec`s Python so that the
# SIGTERM a preemption or maintenance event sends reaches the training process
# directly: it saves a checkpoint at the current step (all hosts agree on the
# step through JAX's preemption sync point) and exits 0. `train` again on the
# new slice resumes.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 create|setup|train TPU_NAME ZONE [training flags]" >&2
  exit 2
fi
action=$1 tpu=$2 zone=$3
shift 3
cd "$(dirname "$0")/.."
case $action in
  create)
    gcloud compute tpus tpu-vm create "$tpu" --zone "$zone" \
      --accelerator-type "${ACCELERATOR:-v4-32}" \
      --version "${RUNTIME:-tpu-ubuntu2204-base}"
    ;;
  setup)
    gcloud compute tpus tpu-vm scp --recurse --worker=all --zone "$zone" \
      . "$tpu":~/cliplite_jax
    gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all \
      --command "cd ~/cliplite_jax && python3 -m venv .venv && . .venv/bin/activate && pip install -q -e . 'jax[tpu]'"
    ;;
  train)
    args=$(printf ' %q' "$@")
    gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all \
      --command "cd ~/cliplite_jax && bash launch/tpu_vm_worker.sh$args"
    ;;
  *)
    echo "$0: unknown action $action (create, setup or train)" >&2
    exit 2
    ;;
esac
