#!/bin/bash
# The paper's COCO ablations, CLIP-Lite against CLIP, as one command each:
#
#   launch/coco_ablations.sh batch ROOT [SEEDS]     # batch 64/128/256/512
#   launch/coco_ablations.sh fraction ROOT [SEEDS]  # 10/25/50/75/100 % of the images
#   launch/coco_ablations.sh text_layers ROOT [SEEDS]  # 2/4/6-layer BERT + 12
#   launch/coco_ablations.sh backbone ROOT [SEEDS]  # ResNet-18/50/101/152
#
# Each study's runs differ in its variable alone, as the reference code's
# configs/done set them: the batch study (200k steps, 2-layer text, flip)
# has no 1024 run, and the backbone study's RN50 is trained at its batch
# 512, not taken from the headline run. Set BERT=DIR (a local BERT-base) to
# start the fraction runs from it, as the paper's are (their workdirs then
# say "bert").
#
# SEEDS defaults to "0 1 2". Every run is configs/coco_rn50_bert.py or
# configs/clip_baseline.py with the ablation's argument (the paper's
# learning rates and schedules; COCO prepared with `tfds build
# coco_captions/2014`), trained into ROOT/<config>_<arg>_seed<S> through
# launch/gpu_host.sh (every GPU of the host). A run whose final evaluation
# exists is skipped and an interrupted one resumes, so rerunning the command
# continues the grid. Collect the results (mean ± std over seeds) with
#   python experiments/experiments.py collect --root=ROOT
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: launch/coco_ablations.sh batch|fraction|text_layers|backbone ROOT [SEEDS]"
study=${1:?$usage}
root=${2:?$usage}
seeds=${3:-0 1 2}
case "$study" in
  batch) args=("batch=64" "batch=128" "batch=256" "batch=512") ;;
  fraction) args=("fraction=0.1" "fraction=0.25" "fraction=0.5"
                  "fraction=0.75" "")
            if [[ -n "${BERT:-}" ]]; then
              args=("${args[@]/%/,bert=$BERT}"); args[-1]="bert=$BERT"
            fi ;;
  text_layers) args=("text_layers=2" "text_layers=4" "text_layers=6" "") ;;
  backbone) args=("backbone=rn18" "backbone=rn50" "backbone=rn101"
                  "backbone=rn152") ;;
  *) echo "unknown study $study: batch, fraction, text_layers or backbone" >&2
     exit 2 ;;
esac
for seed in $seeds; do
  for arg in "${args[@]}"; do
    for config in coco_rn50_bert clip_baseline; do
      label=${arg/bert=$BERT/bert}  # a path makes no name
      label=${label//,/_}
      name="${config}_${label:-headline}_seed${seed}"
      workdir="$root/${name//=/}"
      if [[ -f "$workdir/config.json" ]]; then
        total=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['total_steps'])" "$workdir/config.json")
        if [[ -f "$workdir/eval/step_${total}.json" ]]; then
          echo "done: $name"; continue
        fi
      fi
      echo "--- $name"
      launch/gpu_host.sh --config="configs/${config}.py${arg:+:$arg}" \
          --workdir="$workdir" --config.seed="$seed"
    done
  done
done
