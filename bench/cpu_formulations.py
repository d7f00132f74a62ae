r"""The train step with each of our CPU formulations switched off in turn.

  python bench/cpu_formulations.py --preset=demo --pairs=50
  python bench/cpu_formulations.py --preset=rn50_112 --pairs=5 \
      --variants=plain_dropout_bits,xla_kernel_grads

Every variant is compiled as its own train step (own state and batch), then
the steps run alternately, one step each per pair, so each ratio comes from
the same moments of this (noisy) machine. A variant swaps one function for
its plain counterpart while the step is traced:

  plain_dropout_bits  dropout and prior keys are jax's threefry keys (bits
                      from XLA:CPU's rolled loop) instead of
                      `prng.UNROLLED_THREEFRY` ones (same bits);
  xla_kernel_grads    stride-1 convs take XLA's own kernel gradient instead
                      of `resnet.stride_1_kernel_grad`;
  xla_stem_forward    the stem's forward is XLA's strided conv instead of
                      the space-to-depth one;
  no_im2col           no 3×3 conv runs as a product of gathered patches;
  im2col_16           3×3 convs with up to 16 output pixels (4×4 maps too,
                      the threshold before) run as patch products.

Prints each step's median and its speed relative to "ours" (> 1: the
variant is faster), and the largest parameter difference from "ours" after
the timed steps: the variants compute the same step, so this is float
rounding, amplified by the training steps (0 for plain_dropout_bits, whose
bits are identical; about 4e-2 for the others after 50 demo steps).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import train_step  # noqa: E402
from cliplite_jax.training import host_memory, prng  # noqa: E402
from cliplite_jax.models import resnet  # noqa: E402

VARIANTS = {
    "plain_dropout_bits": (prng, "with_unrolled_bits", lambda key: key),
    "xla_kernel_grads": (
        resnet, "_stride_1_conv_with_swapped_kernel_grad",
        lambda x, kernel: resnet.torch_padded_conv(x, kernel, (1, 1))),
    "xla_stem_forward": (
        resnet, "_stride_2_conv_via_space_to_depth",
        lambda x, kernel: resnet.torch_padded_conv(x, kernel, (2, 2))),
    "no_im2col": (resnet, "_IM2COL_MAX_PIXELS", 0),
    "im2col_16": (resnet, "_IM2COL_MAX_PIXELS", 16),
}


@contextlib.contextmanager
def substituted(module, name: str, value):
  """`module.name` is `value` inside the block (while a step is traced)."""
  saved = getattr(module, name)
  setattr(module, name, value)
  try:
    yield
  finally:
    setattr(module, name, saved)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", choices=sorted(train_step.PRESETS),
                      default="demo")
  parser.add_argument("--variants", default=",".join(VARIANTS),
                      help="comma-separated, from: " + ", ".join(VARIANTS))
  parser.add_argument("--pairs", type=int, default=50,
                      help="timed steps per variant, alternated")
  args = parser.parse_args()
  names = [v for v in args.variants.split(",") if v]
  unknown = sorted(set(names) - set(VARIANTS))
  if unknown:
    parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
  config = train_step.load_config(argparse.Namespace(
      preset=args.preset, config=None, set=[]))
  if not config.model.image.get("im2col", False):
    print("note: this preset runs without the CPU formulations "
          "(model.image.im2col=False); only plain_dropout_bits applies")
  steps = {"ours": train_step.JaxStep(config)}
  print(f"compiled ours in {steps['ours'].compile_s:.1f} s", flush=True)
  for name in names:
    with substituted(*VARIANTS[name]):
      steps[name] = train_step.JaxStep(config)
    print(f"compiled {name} in {steps[name].compile_s:.1f} s", flush=True)
  times = {name: [] for name in steps}
  for _ in range(args.pairs):
    for name, step in steps.items():
      times[name].append(train_step.timed(step)[0])
  ours = statistics.median(times["ours"])
  reference = jax.tree.leaves(steps["ours"].state.params)
  print(f"{args.preset}: median of {args.pairs} alternated steps each")
  print(f"  {'variant':20s} {'step ms':>8s} {'speed vs ours':>14s} "
        f"{'max |param - ours|':>19s}")
  for name, values in times.items():
    median = statistics.median(values)
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(reference, jax.tree.leaves(steps[name].state.params)))
    print(f"  {name:20s} {median * 1e3:8.1f} {ours / median:14.3f} {diff:19.1e}")


if __name__ == "__main__":
  host_memory.reexec_with_fast_malloc()  # as the training command runs
  main()
