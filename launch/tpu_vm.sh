#!/bin/bash
# Training on a Cloud TPU VM slice: runs the same command on every host.
#
#   launch/tpu_vm.sh TPU_NAME ZONE --config=configs/coco_rn50_bert.py --workdir=gs://bucket/runs/rn50
#
# Each host runs launch/tpu_vm_worker.sh, which `exec`s Python so that the
# SIGTERM a preemption or maintenance event sends reaches the training process
# directly: it saves a checkpoint at the current step (all hosts agree on the
# step through JAX's preemption sync point) and exits 0. Run the same command
# again on the new slice to resume.
set -euo pipefail
tpu=$1 zone=$2
shift 2
args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all \
  --command "cd ~/cliplite_jax && bash launch/tpu_vm_worker.sh$args"
