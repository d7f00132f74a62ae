r"""Times the jitted CLIP-Lite train step, beside the same step in PyTorch.

  python bench/train_step.py --preset=demo            # configs/default.py
  python bench/train_step.py --preset=demo --torch_variants=eager  # quicker
  python bench/train_step.py --preset=rn50_112        # RN50 + BERT-base, 112 px, batch 16, f32
  python bench/train_step.py --preset=rn50_224_bf16 --notorch --peak_tflops=989  # a GPU
  python bench/train_step.py --preset=vit_demo --part=image_tower   # ViT-Ti/16 ×4 blocks
  python bench/train_step.py --preset=vit_b16_224 --part=image_tower  # ViT-B/16, batch 8

PyTorch runs the step in each of `--torch_variants` (bench/torch_cliplite.py:
eager or `torch.compile`, contiguous or channels_last; all four by default),
each in a process of its own, as a training job would, so neither
framework's heap or idle thread pool weighs on the other's steps. Where
torch.compile cannot work (no C++ compiler, ...) one line says so and the
other variants run. Prints compile time, the median step time of each over
interleaved rounds (JAX steps, then each PyTorch variant's steps, repeated,
so all see the same machine state), JAX's speed against each variant and
against the fastest one (the baseline a PyTorch user would pick),
images/s, one device's FLOPs per step (the lowered step's cost analysis over
the device count), and the achieved FLOP/s as a fraction of one device's
measured matmul peak
(and of `--peak_tflops`, the accelerator's datasheet peak, when given: MFU).
`--set key=value` overrides config fields (e.g. --set model.dtype=bfloat16).
`--xla_defaults` also times the JAX step compiled with XLA's default CPU
options instead of the config's `cpu_compiler_options`, in the same rounds.
Like `cliplite_jax.main`, it runs with malloc on transparent huge pages and,
where the machine has it, tcmalloc (cliplite_jax/training/host_memory.py; the PyTorch
process inherits the setting), and prints the kernel CPU time per step beside
each step time; `bench/huge_pages.py` compares the malloc settings.

`--part=image_tower` times the image tower alone (bench/image_tower.py); a
ViT's PyTorch side (transformers' CLIPVisionModel) starts from JAX's weights,
and a variant whose first-step loss differs from JAX's by more than
`LOSS_RTOL` is dropped with a line: the two would not be computing the same
step. Both first-step losses go in the JSON line either way.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)

# On a GPU the PyTorch workers share the device: JAX takes what it uses, not
# 75 % of the memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
from cliplite_jax.training import host_memory  # noqa: E402  (light: no jax)

if __name__ == "__main__":
  # As the training command runs; before the heavy imports, which the
  # re-executed process would otherwise repeat.
  host_memory.reexec_with_fast_malloc()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cliplite_jax import config_io  # noqa: E402

from cliplite_jax.training import optim, parallel
from cliplite_jax.training import state as state_lib, train  # noqa: E402
from cliplite_jax.models import cliplite, towers  # noqa: E402

import image_tower  # noqa: E402  (bench/, beside this file)
from torch_steps import (TORCH_VARIANTS, TorchProcess,  # noqa: E402
                         TorchUnavailable, serve_torch_rounds, timed,
                         torch_version)

PRESETS = {
    "demo": ("configs/default.py", {}),
    "rn50_112": ("configs/coco_rn50_bert.py",
                 {"data.image_size": 112, "batch_size": 16,
                  "model.dtype": "float32", "model.image.im2col": True}),
    "rn50_224_bf16": ("configs/coco_rn50_bert.py",
                      {"batch_size": 128, "model.dtype": "bfloat16"}),
    # A 4-block ViT-Ti/16 + CLIP text at 64 px, batch 64 (float32).
    "vit_demo": ("configs/vit_demo.py", {}),
    # ViT-B/16 (depth 0: the variant's 12 blocks) at 224 px: a CPU-sized
    # batch in float32, a GPU's in bfloat16 (its text tower the demo's).
    "vit_b16_224": ("configs/vit_demo.py", {
        "model.image.variant": "B/16", "model.image.depth": 0,
        "data.image_size": 224, "batch_size": 8}),
    "vit_b16_224_bf16": ("configs/vit_demo.py", {
        "model.image.variant": "B/16", "model.image.depth": 0,
        "data.image_size": 224, "batch_size": 256,
        "model.dtype": "bfloat16"}),
}
# How far PyTorch's first-step loss may be from JAX's, relative, where both
# start from the same weights (image_tower.SAME_WEIGHTS): float32 differs
# in summation order only; bfloat16 in its 8-bit mantissa's rounding.
LOSS_RTOL = {"float32": 1e-3, "bfloat16": 3e-2}


def _literal(text: str) -> int | float | str:
  """`text` as an int or a float where it reads as one."""
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


def load_config(args):
  path, overrides = PRESETS[args.preset]
  config = config_io.load_file(args.config or os.path.join(REPO, path))
  overrides = dict(overrides)
  for item in args.set:
    key, _, value = item.partition("=")
    overrides[key] = value
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    if leaf not in node:  # a new field, e.g. one more XLA option
      node[leaf] = _literal(value)
      continue
    if isinstance(node[leaf], bool) and isinstance(value, str):
      value = value.lower() in ("1", "true", "yes")
    node[leaf] = type(node[leaf])(value) if not isinstance(value, type(
        node[leaf])) else value
  config.optim.warmup_steps = min(config.optim.warmup_steps,
                                  config.total_steps - 1)
  return config


def random_batch(config, seed=0):
  """uint8 images [B, S, S, 3]; int32 ids and mask [B, L] (lengths 8 … L)."""
  rng = np.random.default_rng(seed)
  b, s, length = config.batch_size, config.data.image_size, config.data.max_tokens
  lengths = rng.integers(8, length + 1, size=b)
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  ids = rng.integers(5, config.model.text.vocab_size, (b, length)) * mask
  return {"images": rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
          "input_ids": ids.astype(np.int32), "attention_mask": mask}


def matmul_peak(dtype) -> float:
  """Best FLOP/s of a square matmul on the default device (f32 on CPU)."""
  n = 2048 if jax.default_backend() == "cpu" else 8192
  # Random, not constant, data: a GPU's products run faster on the latter.
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(5):
    start = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


def _flops(cost) -> float:
  """The "flops" entry of an XLA cost analysis (a dict, or a list of one)."""
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", float("nan")))


PARTS = ("step", "image_tower")


def same_weights(config, part: str) -> bool:
  """Whether PyTorch's side of `part` starts from JAX's initial weights."""
  return (part == "image_tower"
          and image_tower.tower_name(config) in image_tower.SAME_WEIGHTS)


def loss_mismatch(config, part: str, jax_loss: float,
                  torch_loss: float) -> str | None:
  """Why PyTorch's first-step loss shows another computation than JAX's
  (where both start from the same weights, beyond `LOSS_RTOL`), or None."""
  if not same_weights(config, part):
    return None
  rtol = LOSS_RTOL.get(config.model.dtype, LOSS_RTOL["bfloat16"])
  if abs(torch_loss - jax_loss) <= rtol * abs(jax_loss):
    return None
  return (f"first-step loss {torch_loss:.6g} is not JAX's {jax_loss:.6g} "
          f"from the same weights (relative tolerance {rtol:g})")


class JaxStep:
  """`part` of `config` compiled for every device: "step" (the train step)
  or "image_tower" (bench/image_tower.py)."""

  def __init__(self, config, part: str = "step"):
    mesh = parallel.make_mesh()
    if part == "image_tower":
      step, self.state, self.batch = image_tower.make_step(config, mesh)
    else:
      model, tx = cliplite.build(config), optim.build(config)
      self.state = state_lib.init_sharded(config, model, tx, mesh)
      self.batch = parallel.shard_batch(random_batch(config), mesh)
      step = train.make_train_step(config, model, tx, mesh)
    start = time.perf_counter()
    lowered = step.lower(self.state, self.batch)
    self.compiled = lowered.compile()
    self.compile_s = time.perf_counter() - start
    # The lowered program's count, not the compiled one's: on GPU the
    # compiled convs and matmuls are cuDNN/cuBLAS custom calls, whose FLOPs
    # XLA's cost analysis leaves out (1,382 of 5,049 GFLOP on an H200). The
    # lowered program is the whole step, the compiled one a device's share.
    self.flops = _flops(lowered.cost_analysis()) / mesh.devices.size
    self.compiled_flops = _flops(self.compiled.cost_analysis())
    self.first_loss = float(self.run())  # the first call also allocates

  def run(self):
    """One step; its loss (float32 []; the train step's metrics'
    "loss/total", NaN for an objective without one)."""
    self.state, outputs = self.compiled(self.state, self.batch)
    jax.block_until_ready((self.state, outputs))
    if isinstance(outputs, dict):
      return outputs.get("loss/total", float("nan"))
    return outputs


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", choices=sorted(PRESETS), default="demo")
  parser.add_argument("--part", choices=PARTS, default="step",
                      help="the whole train step, or the image tower alone "
                      "trained as an ImageNet classifier")
  parser.add_argument("--json", help="append the measurements as one JSON "
                      "line to this file")
  parser.add_argument("--config", help="a config file[:arg] instead of the "
                      "preset's (the preset's overrides still apply)")
  parser.add_argument("--set", action="append", default=[],
                      metavar="KEY=VALUE")
  parser.add_argument("--steps", type=int, default=5, help="per round")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--notorch", dest="torch", action="store_false")
  parser.add_argument("--torch_variants", default=",".join(TORCH_VARIANTS),
                      help="comma-separated PyTorch variants to time, of "
                      f"{', '.join(TORCH_VARIANTS)}")
  parser.add_argument("--torch_lookahead", choices=("every_step", "on_sync"),
                      default="every_step",
                      help="PyTorch's Lookahead arithmetic at every step, as "
                      "optax's jitted form runs it, or only on sync steps "
                      "(same values, less work)")
  parser.add_argument("--torch_variant", help=argparse.SUPPRESS)
  parser.add_argument("--xla_defaults", action="store_true",
                      help="also time the step without cpu_compiler_options")
  parser.add_argument("--peak_tflops", type=float, default=0.0,
                      help="datasheet peak of the accelerator, for MFU")
  parser.add_argument("--torch_worker", action="store_true",
                      help=argparse.SUPPRESS)
  args = parser.parse_args()
  config = load_config(args)
  if args.torch_worker:
    batch = (image_tower.random_batch(config) if args.part == "image_tower"
             else random_batch(config))
    return serve_torch_rounds(config, batch, args.torch_variant,
                              args.torch_lookahead == "every_step", args.part)
  variants = [v for v in args.torch_variants.split(",") if v]
  unknown = sorted(set(variants) - set(TORCH_VARIANTS))
  if unknown:
    parser.error(f"--torch_variants: unknown {unknown}; "
                 f"choose from {', '.join(TORCH_VARIANTS)}")
  b, s = config.batch_size, config.data.image_size
  m = config.model
  text = (" alone, as an ImageNet classifier" if args.part == "image_tower"
          else f" + {towers.text_tower(m.text).describe(m.text)}")
  print(f"{args.preset}: {towers.image_tower(m.image).describe(m.image)}"
        f"{text}, {s} px, batch {b}, {m.dtype}, {jax.device_count()} × "
        f"{jax.devices()[0].device_kind}", flush=True)
  if os.environ.get("XLA_FLAGS"):
    print(f"  XLA_FLAGS        {os.environ['XLA_FLAGS']}")
  print(f"  XLA options      {parallel.compiler_options(config) or 'defaults'}")
  ours = JaxStep(config, args.part)
  defaults = None
  if args.xla_defaults:
    config_defaults = config.copy_and_resolve_references()
    config_defaults.cpu_compiler_options = {}
    defaults = JaxStep(config_defaults, args.part)
  theirs, torch_errors, first_losses = {}, {}, {}
  for variant in variants if args.torch else []:
    if variant.startswith("compile") and any(
        v.startswith("compile") for v in torch_errors):
      continue  # torch.compile failed once: it would again, said already
    start = time.perf_counter()
    try:
      theirs[variant] = TorchProcess(os.path.abspath(__file__), sys.argv[1:],
                                     variant)
    except TorchUnavailable as e:
      torch_errors[variant] = str(e)
      what = ("torch.compile variants" if variant.startswith("compile")
              else f"torch {variant}")
      print(f"  {what}: could not run here, skipped ({e})", flush=True)
      continue
    print(f"  torch {variant}: set up in {time.perf_counter() - start:.1f} s "
          "(model, compile, two steps)", flush=True)
    first_losses[variant] = theirs[variant].first_loss
    mismatch = loss_mismatch(config, args.part, ours.first_loss,
                             first_losses[variant])
    if mismatch:
      print(f"  torch {variant}: {mismatch}; dropped", flush=True)
      torch_errors[variant] = mismatch
      theirs.pop(variant).close()
  steps = {name: step for name, step in
           (("jax", ours), ("defaults", defaults)) if step}
  steps.update({f"torch {v}": p for v, p in theirs.items()})
  times = {name: [] for name in steps}
  system = {name: [] for name in steps}
  round_medians = {name: [] for name in steps}
  for _ in range(args.rounds):
    for name, step in list(steps.items()):
      if name.startswith("torch"):
        try:
          timings = step.round(args.steps)
        except TorchUnavailable as e:
          variant = name.removeprefix("torch ")
          print(f"  torch {variant}: failed in a round, dropped ({e})",
                flush=True)
          torch_errors[variant] = str(e)
          theirs.pop(variant).close()
          for table in (steps, times, system, round_medians):
            del table[name]
          continue
      else:
        timings = [timed(step) for _ in range(args.steps)]
      times[name] += [wall for wall, _ in timings]
      system[name] += [kernel for _, kernel in timings]
      round_medians[name].append(statistics.median(w for w, _ in timings))
  for process in theirs.values():
    process.close()

  def step_line(name: str, label: str | None = None, width=17) -> str:
    seconds = statistics.median(times[name])
    label = label or f"{name} step"
    return (f"  {label:{width}s}{seconds * 1e3:8.1f} ms   "
            f"{b / seconds:8.1f} img/s   (kernel CPU "
            f"{statistics.mean(system[name]) * 1e3:.1f} ms/step)")
  peak = matmul_peak(jnp.float32 if jax.default_backend() == "cpu"
                     else jnp.bfloat16)
  jax_s = statistics.median(times["jax"])
  tunables = os.environ.get("GLIBC_TUNABLES", "glibc defaults")
  print(f"  malloc tunables  {tunables}")
  print(f"  LD_PRELOAD       {os.environ.get('LD_PRELOAD') or 'none'}")
  print(f"  compile          {ours.compile_s:8.1f} s")
  same = same_weights(config, args.part)
  print(f"  first-step loss  JAX {ours.first_loss:.6f}" + "".join(
      f", torch {v} {loss:.6f}" for v, loss in first_losses.items()) +
      (" (same initial weights)" if same else
       " (each side's own initial weights)"))
  print(step_line("jax"))
  print(f"  step FLOPs       {ours.flops / 1e9:8.2f} GFLOP per device (XLA "
        f"cost analysis of the lowered step; of the compiled one: "
        f"{ours.compiled_flops / 1e9:.2f})")
  print(f"  achieved         {ours.flops / jax_s / 1e9:8.1f} GFLOP/s = "
        f"{ours.flops / jax_s / peak:.3f} of the measured matmul peak "
        f"({peak / 1e9:.0f} GFLOP/s)")
  if defaults:
    defaults_s = statistics.median(times["defaults"])
    print(f"  jax, XLA defaults {defaults_s * 1e3:7.1f} ms   (compile "
          f"{defaults.compile_s:.1f} s; config options / defaults speed "
          f"{defaults_s / jax_s:.2f})")
  if args.peak_tflops:
    print(f"  MFU              {ours.flops / jax_s / args.peak_tflops / 1e12:8.3f}"
          f" (of {args.peak_tflops:g} TFLOP/s)")
  if theirs:
    lookahead = (f", Lookahead {args.torch_lookahead}" if args.part == "step"
                 else "")
    print(f"  PyTorch {torch_version()}{lookahead}; jax / variant speed "
          "(> 1: JAX faster), of medians and per round")
    for variant in theirs:
      name = f"torch {variant}"
      ratios = [t / j for t, j in zip(round_medians[name],
                                      round_medians["jax"])]
      print(step_line(name, f"  {variant}", width=26) +
            f"   jax / this {statistics.median(times[name]) / jax_s:.2f}"
            f" (rounds {min(ratios):.2f}-{max(ratios):.2f}, median "
            f"{statistics.median(ratios):.2f})")
    best = min(theirs, key=lambda v: statistics.median(times[f"torch {v}"]))
    # "torch step" is the fastest variant's (bench/huge_pages.py reads it).
    times["torch"], system["torch"] = (times[f"torch {best}"],
                                       system[f"torch {best}"])
    torch_s = statistics.median(times["torch"])
    print(step_line("torch") + f"   (fastest: {best})")
    print(f"  jax / torch speed {torch_s / jax_s:7.2f}  (> 1: JAX faster; "
          f"against the fastest PyTorch variant, {best})")
  if args.json:
    record = {
        "preset": args.preset, "part": args.part, "set": args.set,
        "batch": b, "dtype": config.model.dtype,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "device": f"{jax.device_count()} × {jax.devices()[0].device_kind}",
        "compile_s": ours.compile_s, "jax_ms": jax_s * 1e3,
        "jax_images_per_s": b / jax_s, "gflop_per_device": ours.flops / 1e9,
        "mfu": (ours.flops / jax_s / args.peak_tflops / 1e12
                if args.peak_tflops else None),
        "torch_ms": {v: statistics.median(times[f"torch {v}"]) * 1e3
                     for v in theirs},
        # The best single step of each, beside the medians: on a noisy VM
        # the least disturbed step.
        "min_ms": {name.removeprefix("torch "): min(t) * 1e3
                   for name, t in times.items() if name != "torch"},
        "torch_errors": torch_errors, "same_weights": same,
        "first_loss": {"jax": ours.first_loss, **first_losses}}
    if theirs:
      record.update(torch_version=torch_version(), torch_fastest=best,
                    jax_over_torch=torch_s / jax_s)
    with open(args.json, "a") as f:
      f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
  main()
