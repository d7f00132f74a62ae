#!/usr/bin/env bash
# One prepared GPU check, sized to finish in under 8 minutes on one H100/H200:
#   1. the headline train step (RN50 + BERT-base, 224 px, batch 128, bf16),
#      JAX against PyTorch on the same GPU (bf16 autocast, channels_last,
#      cudnn.benchmark, fused SGD; eager and torch.compile, the fastest kept);
#   2. the image tower alone (ResNet-50 trained as an ImageNet classifier,
#      batch 256), both sides, to compare with published ResNet-50 figures;
#   3. JAX's levers, JAX alone: batch 256 per device, XLA's latency-hiding
#      scheduler, remat on, cuBLAS instead of Triton for products.
#
#   bench/gpu_wheels.sh .whl              # here, once: what the image lacks
#   bench/gpu_check.sh OUT [WHEELS_DIR]   # there; WHEELS_DIR defaults to .whl
#
# Writes OUT/gpu_check.log (everything printed), OUT/results.jsonl (one line
# per run, bench/train_step.py --json) and OUT/summary.md (the table,
# bench/gpu_report.py). A run that fails or overruns is logged and the next
# one goes on; runs left when GPU_CHECK_BUDGET_S (default 420) is spent are
# skipped with a line, and GPU_CHECK_RUNS (names, space-separated) picks
# runs, so a second call can take what the first had no time for
# (e.g. GPU_CHECK_RUNS="big_batch remat"). Without a GPU it is a dry run: it says so, and runs
# every command once at a tiny size on CPU (PyTorch eager only), so the
# script and its flags are checked before a GPU is at hand.
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh OUT_DIR [WHEELS_DIR]}
wheels=${2:-.whl}
budget=${GPU_CHECK_BUDGET_S:-420}
only=${GPU_CHECK_RUNS:-step image_tower big_batch latency_hiding remat cublas_gemm}
mkdir -p "$out"
out=$(cd "$out" && pwd)
wheels=$(cd "$wheels" 2>/dev/null && pwd || echo "$wheels")
cd "$(dirname "$0")/.."
exec > >(tee "$out/gpu_check.log") 2>&1
: > "$out/results.jsonl"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python3}
start=$SECONDS

if ! "$python" -c "import grain, tensorflow_datasets, ml_collections" 2>/dev/null; then
  if ! compgen -G "$wheels/*.whl" > /dev/null; then
    echo "gpu_check: grain, tensorflow_datasets or ml_collections is missing" \
         "and $wheels holds no wheels (make them with bench/gpu_wheels.sh)"
    exit 1
  fi
  site=$(mktemp -d)
  "$python" -m pip install -q --no-index --no-deps --no-compile \
      --target "$site" "$wheels"/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:$site"
fi

read -r backend kind < <("$python" -c "import jax
print(jax.default_backend(), jax.devices()[0].device_kind.replace(' ', '_'))")
"$python" -c "import jax, torch
print('jax', jax.__version__, jax.devices()[0].device_kind, '| torch',
      torch.__version__, 'CUDA' if torch.cuda.is_available() else 'no CUDA')" \
  || echo "gpu_check: PyTorch is not importable; its side will say so"
if [ "$backend" = gpu ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  case $kind in
    *H100*|*H200*|*H800*) peak=989 ;;  # dense bf16 TFLOP/s, datasheet
    *A100*) peak=312 ;;
    *) peak=0 ;;
  esac
  base=(--preset=rn50_224_bf16 --steps=10 --rounds=3 --peak_tflops=$peak)
  torch_variants=eager_channels_last,compile_channels_last
  tower_batch=256 big_batch=256
else
  echo "gpu_check: no GPU (JAX's backend is $backend): the CUDA runs are" \
       "skipped. Dry run: every command once on CPU, on the demo model at" \
       "32 px and batch 8, PyTorch eager only."
  base=(--preset=demo --set data.image_size=32 --set batch_size=8 --steps=1
        --rounds=1)
  torch_variants=eager
  tower_batch=8 big_batch=16
fi

run() {  # run NAME XLA_FLAGS ARGS...: one bench/train_step.py, logged
  local name=$1 flags=$2 left=$((budget - (SECONDS - start)))
  shift 2
  case " $only " in *" $name "*) ;; *) return ;; esac
  if [ "$left" -lt 60 ]; then
    echo "=== $name: skipped, ${budget} s budget spent"
    return
  fi
  echo "=== $name ($(date -u +%H:%M:%S), ${left} s of the budget left)"
  XLA_FLAGS="$flags" timeout "$left" "$python" bench/train_step.py "${base[@]}" \
      --json="$out/results.jsonl" "$@" \
    || echo "=== $name: failed or overran (exit $?), going on"
}

run step "" --torch_variants=$torch_variants
run image_tower "" --part=image_tower --set batch_size=$tower_batch \
    --torch_variants=$torch_variants
run big_batch "" --notorch --set batch_size=$big_batch
run latency_hiding "--xla_gpu_enable_latency_hiding_scheduler=true" --notorch
run remat "" --notorch --set model.remat=True
run cublas_gemm "--xla_gpu_enable_triton_gemm=false" --notorch

"$python" bench/gpu_report.py "$out/results.jsonl" > "$out/summary.md"
cat "$out/summary.md"
echo "gpu_check: $((SECONDS - start)) s; results in $out"
