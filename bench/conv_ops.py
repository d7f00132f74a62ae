r"""Forward + backward of every conv shape of a ResNet, three ways, side by side.

  python bench/conv_ops.py --preset=demo       # ResNet-18 × 0.25, 64 px, batch 64
  python bench/conv_ops.py --preset=rn50_112   # ResNet-50, 112 px, batch 16

For each distinct conv of the network (and the stem's max pool): the median
time of jit(grad) with respect to input and kernel of XLA's own convolution
(`lax.conv_general_dilated`, or the reduce-window max pool), of ours
(`resnet.Conv` with the preset's `im2col` setting, which also swaps the
stride-1 kernel gradients, and `max_pool_3x3_stride_2`),
and of torch's conv2d / max_pool2d (NCHW, all cores), interleaved. JAX's
programs get the preset config's `cpu_compiler_options`, as in training. The
stem has no input gradient in training, so its row times the kernel gradient
only; its forward and kernel gradient are then timed apart, as XLA's conv and
on space-to-depth input.
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cliplite_jax import config_io  # noqa: E402

from cliplite_jax.training import host_memory, parallel
from cliplite_jax.models import resnet  # noqa: E402

# (batch, size, depth, width, the config whose XLA CPU options the step uses)
PRESETS = {"demo": (64, 64, 18, 0.25, "configs/default.py"),
           "rn50_112": (16, 112, 50, 1.0, "configs/coco_rn50_bert.py")}
REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def conv_shapes(batch, size, depth, width):
  """(name, B, H, C, O, k, stride) of each distinct conv, in network order."""
  kind, stages = resnet.LAYOUTS[depth]
  stem = int(64 * width)
  rows = [("stem 7×7/2", batch, size, 3, stem, 7, 2)]
  h, c = size // 4, stem
  for stage in range(4):
    f = int(64 * width * 2**stage)
    s = 2 if stage else 1
    if kind == "basic":
      rows += [(f"s{stage + 1} 3×3/{s}", batch, h, c, f, 3, s),
               (f"s{stage + 1} 3×3/1", batch, h // s, f, f, 3, 1)]
      out = f
    else:
      rows += [(f"s{stage + 1} 1×1 in", batch, h, c, f, 1, 1),
               (f"s{stage + 1} 3×3/{s}", batch, h, f, f, 3, s),
               (f"s{stage + 1} 1×1 out", batch, h // s, f, 4 * f, 1, 1)]
      out = 4 * f
    if s != 1 or c != out:
      rows.append((f"s{stage + 1} shortcut 1×1/{s}", batch, h, c, out, 1, s))
    if kind != "basic":
      rows.append((f"s{stage + 1} 1×1 in (later)", batch, h // s, out, f, 1, 1))
    c, h = out, h // s
  return rows


def median_time(fn, repeats=7):
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def jax_timer(forward, args, argnums, options=None):
  """Median seconds of the gradient of sum(forward(*args)²) / 2, compiled
  with the XLA `options` (a config's `cpu_compiler_options`)."""
  loss = lambda *a: 0.5 * jnp.sum(forward(*a) ** 2)  # noqa: E731
  grad = jax.jit(jax.grad(loss, argnums=argnums), compiler_options=options)
  return median_time(lambda: jax.block_until_ready(grad(*args)))


def torch_timer(forward, args, needs_grad):
  """The same in torch; NHWC / HWIO arrays are passed as NCHW / OIHW."""
  import torch
  order = {4: {0: (0, 3, 1, 2), 1: (3, 2, 0, 1)}}
  tensors = [torch.from_numpy(np.array(a)).permute(*order[a.ndim][i])
             .contiguous().requires_grad_(g)
             for i, (a, g) in enumerate(zip(args, needs_grad))]

  def step():
    (0.5 * forward(*tensors).pow(2).sum()).backward()
  return median_time(step)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", choices=sorted(PRESETS), default="demo")
  parser.add_argument("--im2col", type=int, default=1,
                      help="ours: ResNet(im2col=...) (the CPU configs: 1)")
  args = parser.parse_args()
  import torch
  import torch.nn.functional as F
  torch.set_num_threads(os.cpu_count())
  batch, size, depth, width, config_file = PRESETS[args.preset]
  options = parallel.compiler_options(
      config_io.load_file(os.path.join(REPO, config_file)))
  timer = functools.partial(jax_timer, options=options)
  print(f"{args.preset}: ResNet-{depth} × {width}, {size} px, batch {batch}; "
        f"fwd + bwd, ms; XLA options {options or 'defaults'}", flush=True)
  print(f"  {'op':24s} {'shape':>22s} {'XLA':>8s} {'ours':>8s} {'torch':>8s}")
  totals = np.zeros(3)
  key = jax.random.key(0)
  for name, b, h, c, o, k, s in conv_shapes(batch, size, depth, width):
    x = jax.random.normal(key, (b, h, h, c))
    w = 0.1 * jax.random.normal(jax.random.key(1), (k, k, c, o))
    pad = k // 2
    xla = lambda x, w, s=s, pad=pad: jax.lax.conv_general_dilated(  # noqa: E731
        x, w, (s, s), [(pad, pad)] * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    stem = name.startswith("stem")
    # As resnet.ResNet builds them: the stem on space-to-depth input.
    conv = resnet.Conv(o, (k, k), (s, s), im2col=bool(args.im2col) and not stem,
                       space_to_depth=bool(args.im2col) and stem,
                       swap_kernel_grad=bool(args.im2col) and not stem)
    ours = lambda x, w, conv=conv: conv.apply(  # noqa: E731
        {"params": {"kernel": w}}, x)
    theirs = lambda x, w, s=s, pad=pad: F.conv2d(  # noqa: E731
        x, w, stride=s, padding=pad)
    argnums = 1 if stem else (0, 1)
    row = [timer(xla, (x, w), argnums), timer(ours, (x, w), argnums),
           torch_timer(theirs, (x, w), (not stem, True))]
    totals += row
    print(f"  {name:24s} {f'{b}×{h}×{h}×{c}→{o}':>22s} "
          + " ".join(f"{t * 1e3:8.2f}" for t in row), flush=True)
    if stem:  # the max pool follows the stem
      x = jax.nn.relu(jax.random.normal(key, (b, h // 2, h // 2, o)))
      window = lambda x: jax.lax.reduce_window(  # noqa: E731
          x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
          ((0, 0), (1, 1), (1, 1), (0, 0)))
      row = [timer(window, (x,), 0),
             timer(resnet.max_pool_3x3_stride_2, (x,), 0),
             torch_timer(lambda x: F.max_pool2d(x, 3, 2, 1), (x,), (True,))]
      totals += row
      print(f"  {'max pool 3×3/2':24s} {f'{b}×{h // 2}×{h // 2}×{o}':>22s} "
            + " ".join(f"{t * 1e3:8.2f}" for t in row), flush=True)
  print(f"  {'total':24s} {'':>22s} "
        + " ".join(f"{t * 1e3:8.1f}" for t in totals))
  print(f"  ours / XLA speed {totals[0] / totals[1]:.2f}, "
        f"ours / torch speed {totals[2] / totals[1]:.2f}  (> 1: ours faster)")
  stem_passes(batch, size, int(64 * width), options)


def stem_passes(batch, size, out, options):
  """The 7×7/2 stem's forward and kernel gradient apart, in both forms."""
  import torch
  import torch.nn.functional as F
  x = jax.random.normal(jax.random.key(0), (batch, size, size, 3))
  w = 0.1 * jax.random.normal(jax.random.key(1), (7, 7, 3, out))
  g = jax.random.normal(jax.random.key(2), (batch, size // 2, size // 2, out))
  row = {}
  for name, conv in (("XLA conv", lambda x, w: resnet.torch_padded_conv(
      x, w, (2, 2))), ("space-to-depth", resnet.space_to_depth_conv)):
    forward = jax.jit(conv, compiler_options=options)
    kernel_grad = jax.jit(
        lambda x, w, g, conv=conv: jax.vjp(lambda w: conv(x, w), w)[1](g)[0],
        compiler_options=options)
    row[f"{name} forward"] = median_time(
        lambda: jax.block_until_ready(forward(x, w)), 15)
    row[f"{name} kernel gradient"] = median_time(
        lambda: jax.block_until_ready(kernel_grad(x, w, g)), 15)
  tx = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous()
  tw = torch.from_numpy(np.array(w)).permute(3, 2, 0, 1).contiguous()
  tg = torch.from_numpy(np.array(g)).permute(0, 3, 1, 2).contiguous()
  tw.requires_grad_(True)

  def torch_forward():
    with torch.no_grad():
      F.conv2d(tx, tw, stride=2, padding=3)

  def torch_forward_and_kernel_gradient():
    tw.grad = None
    F.conv2d(tx, tw, stride=2, padding=3).backward(tg)
  row["torch forward"] = median_time(torch_forward, 15)
  row["torch forward + kernel gradient"] = median_time(
      torch_forward_and_kernel_gradient, 15)
  print(f"stem {batch}×{size}×{size}×3→{out}, per pass, ms")
  for name, seconds in row.items():
    print(f"  {name:32s} {seconds * 1e3:8.2f}")


if __name__ == "__main__":
  host_memory.reexec_with_fast_malloc()  # as the training command runs
  main()
