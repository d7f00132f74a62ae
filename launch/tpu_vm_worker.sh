#!/bin/bash
# One TPU VM host's share of launch/tpu_vm.sh (also usable on its own).
set -euo pipefail
cd "$(dirname "$0")/.."
# The virtualenv made by `pip install -e .` on each host, if there is one.
if [[ -f .venv/bin/activate ]]; then . .venv/bin/activate; fi
# exec: SIGTERM goes straight to Python, no shell in between to swallow it.
exec python -m cliplite_jax.main --distributed "$@"
