#!/usr/bin/env bash
# One prepared GPU check for one H100/H200, the comparisons first (step and
# image_tower about 6 minutes, vit_tower 2.5 more: past the default budget,
# so it may need a second call, GPU_CHECK_RUNS=vit_tower), then JAX's levers
# while the budget lasts:
#   step         the headline train step (RN50 + BERT-base, 224 px, batch
#                128, bf16), JAX against PyTorch on the same GPU (bf16
#                autocast, channels_last, cudnn.benchmark, fused SGD; eager
#                and torch.compile, the fastest kept);
#   image_tower  the image tower alone (ResNet-50 trained as an ImageNet
#                classifier, batch 256), both sides, to compare with
#                published ResNet-50 figures;
#   vit_tower    the same for ViT-B/16 (224 px, batch 256, bf16, AdamW):
#                ours against transformers' CLIPVisionModel from the same
#                initial weights (first-step losses checked), eager and
#                torch.compile (channels_last would touch only its patch
#                conv);
#   big_batch, cublas_gemm, remat, latency_hiding
#                JAX alone: batch 256, cuBLAS instead of Triton for products,
#                remat on, XLA's latency-hiding scheduler;
#   infonce, infonce_ring, sigmoid, sigmoid_ring
#                the headline step under CLIP's and SigLIP's losses, gathered
#                and by ring (loss.gather=ring), beside step's JSD: on one
#                GPU the ring is one block, so these measure its overhead;
#                its memory as devices grow is bench/loss_scaling.py's.
#
#   bench/gpu_wheels.sh .whl              # here, once: what the image lacks
#   bench/gpu_check.sh OUT [WHEELS_DIR]   # there; WHEELS_DIR defaults to .whl
#
# Writes OUT/gpu_check.log (everything printed), OUT/results.jsonl (one line
# per run, bench/train_step.py --json) and OUT/summary.md (the table,
# bench/gpu_report.py). A run that fails is logged and the next one goes on.
# A run starts only if the budget (GPU_CHECK_BUDGET_S, default 450 s) still
# holds its usual length; the rest are skipped with a line. GPU_CHECK_RUNS
# (names, space-separated) picks runs, e.g. GPU_CHECK_RUNS="remat" for a
# second call. Without a GPU it is a dry run: it says so, and runs every
# command once at a tiny size on CPU (PyTorch eager only), so the script and
# its flags are checked before a GPU is at hand. Exits non-zero when no run
# gave a result.
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh OUT_DIR [WHEELS_DIR]}
wheels=${2:-.whl}
budget=${GPU_CHECK_BUDGET_S:-450}
all="step image_tower vit_tower big_batch cublas_gemm remat latency_hiding
     infonce infonce_ring sigmoid sigmoid_ring"
only=${GPU_CHECK_RUNS:-$all}
for name in $only; do
  case " $all " in *" $name "*) ;; *)
    echo "gpu_check: GPU_CHECK_RUNS: no run named '$name' (runs: $all)"
    exit 2 ;;
  esac
done
mkdir -p "$out" || exit 1
out=$(cd "$out" && pwd)
wheels=$(cd "$wheels" 2>/dev/null && pwd || echo "$wheels")
cd "$(dirname "$0")/.." || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python3}

check() {
  local start=$SECONDS
  if ! "$python" -c "import grain, tensorflow_datasets, ml_collections" 2>/dev/null; then
    if ! compgen -G "$wheels/*.whl" > /dev/null; then
      echo "gpu_check: grain, tensorflow_datasets or ml_collections is missing" \
           "and $wheels holds no wheels (make them with bench/gpu_wheels.sh)"
      return 1
    fi
    local site
    site=$(mktemp -d)
    "$python" -m pip install -q --no-index --no-deps --no-compile \
        --target "$site" "$wheels"/*.whl || return 1
    export PYTHONPATH="$PYTHONPATH:$site"
    # The carried protobuf-generated code may be newer than the image's
    # protobuf; the messages it uses are unchanged.
    export TEMPORARILY_DISABLE_PROTOBUF_VERSION_CHECK=true
    "$python" -m pip show protobuf etils orbax-checkpoint 2>/dev/null \
      | grep -E "^(Name|Version)" | paste - - | tr '\n' ';'; echo
    "$python" -c "import grain, tensorflow_datasets, ml_collections" || {
      echo "gpu_check: the carried packages do not import (above)"; return 1; }
  fi

  local backend kind
  read -r backend kind < <("$python" -c "import jax
print(jax.default_backend(), jax.devices()[0].device_kind.replace(' ', '_'))
import sys; print('jax', jax.__version__, file=sys.stderr)")
  "$python" -c "import torch
print('torch', torch.__version__, 'CUDA' if torch.cuda.is_available() else 'no CUDA')" \
    || echo "gpu_check: PyTorch is not importable; its side will say so"
  local base torch_variants vit_preset vit_variants tower_batch big_batch peak
  if [ "$backend" = gpu ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,compute_mode \
        --format=csv,noheader || true
    case $kind in
      *H100_PCIe*) peak=756 ;;  # dense bf16 TFLOP/s, datasheets
      *H100*|*H200*|*H800*) peak=989 ;;
      *A100*) peak=312 ;;
      *) peak=0 ;;
    esac
    base=(--preset=rn50_224_bf16 --steps=10 --rounds=3 --peak_tflops=$peak)
    torch_variants=eager_channels_last,compile_channels_last
    vit_preset=vit_b16_224_bf16 vit_variants=eager,compile
    tower_batch=256 big_batch=256
  elif nvidia-smi -L > /dev/null 2>&1; then
    echo "gpu_check: this machine has a GPU (nvidia-smi) but JAX's backend is" \
         "'${backend:-none}': JAX's CUDA plugin did not load (see above)"
    return 1
  else
    echo "gpu_check: no GPU (JAX's backend is $backend): the CUDA runs are" \
         "skipped. Dry run: every command once on CPU, on the demo models" \
         "(ResNet; ViT-Ti/16 ×4 blocks) at 32 px and batch 8, PyTorch eager" \
         "only."
    base=(--preset=demo --set data.image_size=32 --set batch_size=8 --steps=1
          --rounds=1)
    torch_variants=eager
    vit_preset=vit_demo vit_variants=eager
    tower_batch=8 big_batch=16
  fi

  run() {  # run NAME SECONDS XLA_FLAGS ARGS...: one bench/train_step.py
    local name=$1 needs=$2 flags=$3 left=$((budget - (SECONDS - start)))
    shift 3
    case " $only " in *" $name "*) ;; *) return ;; esac
    [ "$backend" = gpu ] || needs=30
    if [ "$left" -lt "$needs" ]; then
      echo "=== $name: skipped, ${left} s of the ${budget} s budget left" \
           "(it takes about ${needs} s)"
      return
    fi
    echo "=== $name ($(date -u +%H:%M:%S), ${left} s of the budget left)"
    XLA_FLAGS="$flags" timeout "$left" "$python" bench/train_step.py \
        "${base[@]}" --json="$out/results.jsonl" "$@" \
      || echo "=== $name: failed or overran (exit $?), going on"
  }
  # Seconds each takes on an H100/H200 (compiles, PyTorch's set-up, rounds).
  run step 240 "" --torch_variants=$torch_variants
  run image_tower 150 "" --part=image_tower --set batch_size=$tower_batch \
      --torch_variants=$torch_variants
  # The later --preset wins over base's; base's --set (dry run) still apply.
  run vit_tower 150 "" --part=image_tower --preset=$vit_preset \
      --set batch_size=$tower_batch --torch_variants=$vit_variants
  run big_batch 90 "" --notorch --set batch_size=$big_batch
  run cublas_gemm 80 "--xla_gpu_enable_triton_gemm=false" --notorch
  run remat 90 "" --notorch --set model.remat=True
  run latency_hiding 80 "--xla_gpu_enable_latency_hiding_scheduler=true" \
      --notorch
  for loss in infonce sigmoid; do
    run $loss 80 "" --notorch --set loss.name=$loss
    run ${loss}_ring 80 "" --notorch --set loss.name=$loss --set loss.gather=ring
  done

  "$python" bench/gpu_report.py "$out/results.jsonl" > "$out/summary.md"
  cat "$out/summary.md"
  echo "gpu_check: $((SECONDS - start)) s; results in $out"
  [ -s "$out/results.jsonl" ] || { echo "gpu_check: no run gave a result"; return 1; }
}

: > "$out/results.jsonl"
check 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
