#!/usr/bin/env bash
# Wheels for bench/gpu_check.sh: the packages cliplite_jax needs that a bare
# CUDA JAX + PyTorch image lacks (grain, tfds, ml_collections and theirs),
# at the versions installed here, for Python 3.12 on x86-64 Linux.
#
#   bench/gpu_wheels.sh [DIR]     # default .whl (git-ignored)
#
# Pure-Python packages published only as source (promise) are built into a
# wheel here. Needs pip's registry; the GPU machine then needs none.
set -euo pipefail
dir=${1:-.whl}
python=${PYTHON:-python3}
packages="grain array_record tensorflow-datasets tensorflow-metadata
  ml_collections immutabledict promise toml portpicker simplejpeg
  googleapis-common-protos"
mkdir -p "$dir"
rm -f "$dir"/*.whl  # two versions of one package would stop the install
for name in $packages; do
  version=$("$python" -c "import importlib.metadata as m, sys
print(m.version(sys.argv[1]))" "$name" 2>/dev/null) || {
    echo "gpu_wheels: $name is not installed here (pip install -e '.[test]' first)" >&2
    exit 1; }
  if ! "$python" -m pip download -q --no-deps --only-binary=:all: \
      --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$dir" "$name==$version" 2> "$dir/.pip.log"; then
    # Only a pure-Python wheel built here installs on the GPU host's Python.
    echo "gpu_wheels: no Python 3.12 wheel of $name==$version; building one"
    "$python" -m pip wheel -q --no-deps -w "$dir" "$name==$version" || exit 1
    if ! compgen -G "$dir/${name//-/_}-$version-py*-none-any.whl" > /dev/null \
       && ! compgen -G "$dir/$name-$version-py*-none-any.whl" > /dev/null; then
      cat "$dir/.pip.log" >&2
      echo "gpu_wheels: $name is not pure Python; no wheel for Python 3.12" >&2
      exit 1
    fi
  fi
done
rm -f "$dir/.pip.log"
du -sh "$dir"
ls "$dir"
