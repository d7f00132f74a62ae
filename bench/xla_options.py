r"""Times one train step compiled under several sets of XLA CPU options.

  python bench/xla_options.py --preset=demo \
      --variant=xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE \
      --variant="xla_cpu_experimental_ynn_fusion_type="

The step is lowered once and compiled once per variant (`compiled(...,
compiler_options=...)`); the variants then run in interleaved rounds on the
same state and batch, so their ratios come from the same machine state. The
first row, "defaults", compiles with XLA's own options (the config's
`cpu_compiler_options` are ignored here). A variant is `;`-separated
`option=value` pairs; `true`/`false` are booleans, and a repeated enum option
takes a comma-separated list (an empty value clears it).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

import train_step  # noqa: E402
from cliplite_jax.training import host_memory, optim, parallel  # noqa: E402
from cliplite_jax.training import state as state_lib, train  # noqa: E402
from cliplite_jax.models import cliplite  # noqa: E402


def parse_variant(text: str) -> dict:
  """Parses `a=1;b=true` into {"a": "1", "b": True}."""
  options = {}
  for item in filter(None, text.split(";")):
    key, _, value = item.partition("=")
    options[key] = {"true": True, "false": False}.get(value, value)
  return options


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", choices=sorted(train_step.PRESETS),
                      default="demo")
  parser.add_argument("--variant", action="append", default=[])
  parser.add_argument("--steps", type=int, default=3, help="per round")
  parser.add_argument("--rounds", type=int, default=4)
  args = parser.parse_args()
  config = train_step.load_config(argparse.Namespace(
      preset=args.preset, config=None, set=[]))
  mesh = parallel.make_mesh()
  model, tx = cliplite.build(config), optim.build(config)
  state = state_lib.init_sharded(config, model, tx, mesh)
  batch = parallel.shard_batch(train_step.random_batch(config), mesh)
  lowered = train.make_train_step(config, model, tx, mesh).lower(state, batch)
  compiled = {}
  for name in ["defaults"] + args.variant:
    start = time.perf_counter()
    compiled[name] = lowered.compile(
        compiler_options=parse_variant(name) if name != "defaults" else {})
    print(f"compiled {name or '(empty)'} in {time.perf_counter() - start:.1f} s",
          flush=True)
    state, metrics = compiled[name](state, batch)  # the first call allocates
    jax.block_until_ready(metrics)
  times = {name: [] for name in compiled}
  for _ in range(args.rounds):
    for name, step in compiled.items():
      for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times[name].append(time.perf_counter() - start)
  base = statistics.median(times["defaults"])
  print(f"{'options':70s} {'step ms':>8s} {'speed vs defaults':>18s}")
  for name, values in times.items():
    median = statistics.median(values)
    print(f"{name:70s} {median * 1e3:8.1f} {base / median:18.2f}")


if __name__ == "__main__":
  host_memory.reexec_with_fast_malloc()  # as the training command runs
  main()
