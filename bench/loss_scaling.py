r"""JSD (CLIP-Lite) vs InfoNCE (CLIP) vs sigmoid (SigLIP), the last two
gathered (`loss.gather="all"`) and by ring (`"ring"`): loss + gradient cost
as the per-device batch and the device count grow.

  python bench/loss_scaling.py            # ~6 minutes on 2 cores

Each point jits `value_and_grad` of the objective exactly as the train step
builds it (`train.make_objective`: JSD per device shard, the others over the
global batch, gathered or by ring) with respect to the image and text
embeddings [B, D] sharded over the devices, and reports the median time, the
per-device FLOPs from the compiled program's cost analysis, its peak
temporary memory per device (memory analysis), and the bytes each device
receives from collectives, read from the compiled HLO. Three sweeps:
  * per-device batch 64 … 8192 on 1 device;
  * 1, 2, 4, 8 devices at per-device batch 1024 (faked CPU devices, one
    subprocess per count; they share the cores, so time is total work);
  * per-device batch 256 … 2048 on 4 devices.
Writes bench/loss_scaling.png and bench/loss_scaling.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
# loss.name, or loss.name/ring for loss.gather="ring".
LOSS_NAMES = ("jsd", "infonce", "infonce/ring", "sigmoid", "sigmoid/ring")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16)\[([\d,]*)\]")
_COLLECTIVE = re.compile(
    r"=\s*(.*?)\s(all-gather|all-reduce|reduce-scatter|all-to-all|"
    r"collective-permute)(-start)?\(")


def collective_bytes(hlo_text: str) -> dict[str, int]:
  """Bytes of each collective's result in an HLO module, per device, by kind
  (for an all-gather that is the gathered array each device ends up with)."""
  totals: dict[str, int] = {}
  for line in hlo_text.splitlines():
    match = _COLLECTIVE.search(line)
    if not match:
      continue
    shapes = [(_BYTES[dtype], [int(d) for d in dims.split(",") if d])
              for dtype, dims in _SHAPE.findall(match.group(1))]
    if not shapes:
      continue
    size, dims = shapes[-1]  # an async start's tuple ends with the result
    for d in dims:
      size *= d
    totals[match.group(2)] = totals.get(match.group(2), 0) + size
  return totals


def measure(loss_name: str, per_device: int, dim: int, repeats: int) -> dict:
  """Times loss + gradient for one (loss, per-device batch) on every device."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import NamedSharding, PartitionSpec as P

  from cliplite_jax.training import parallel, train
  from configs import default

  config = default.get_config()
  config.loss.name, _, gather = loss_name.partition("/")
  config.loss.gather = gather or "all"
  mesh = parallel.make_mesh()
  objective = train.make_objective(config, mesh)
  batch = per_device * mesh.devices.size
  rows = NamedSharding(mesh, P(parallel.BATCH))
  rng = np.random.default_rng(0)
  embeddings = [jax.device_put(rng.standard_normal((batch, dim), np.float32),
                               rows) for _ in range(2)]
  scalars = {"log_scale": jnp.float32(np.log(1 / 0.07)),
             "logit_bias": jnp.float32(-10.0)}

  def loss(img, txt):
    return objective({"img_emb": img, "txt_emb": txt, **scalars})[0]

  compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(
      *embeddings).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  memory = compiled.memory_analysis()
  jax.block_until_ready(compiled(*embeddings))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*embeddings))
    times.append(time.perf_counter() - start)
  comm = collective_bytes(compiled.as_text())
  # XLA's cost analysis and the HLO count a loop's body once: the ring's
  # body is one hop, and it makes one per device.
  hops = mesh.devices.size if config.loss.gather == "ring" else 1
  return {"loss": loss_name, "devices": mesh.devices.size,
          "per_device": per_device, "global": batch,
          "ms": 1e3 * statistics.median(times),
          "flops_per_device": hops * float(cost.get("flops", float("nan"))),
          "temp_bytes": int(getattr(memory, "temp_size_in_bytes", -1)),
          "gathered_bytes": comm.get("all-gather", 0),
          "reduced_bytes": comm.get("all-reduce", 0),
          "permuted_bytes": hops * comm.get("collective-permute", 0)}


def worker(args) -> None:
  for per_device in args.per_device:
    for name in LOSS_NAMES:
      print(json.dumps(measure(name, per_device, args.dim, args.repeats)),
            flush=True)


def run_sweep(devices: int, per_device: list[int], args) -> list[dict]:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count="
             f"{devices}", JAX_PLATFORMS="cpu")
  command = [sys.executable, os.path.abspath(__file__), "--_worker",
             f"--dim={args.dim}", f"--repeats={args.repeats}",
             "--per_device", *map(str, per_device)]
  done = subprocess.run(command, cwd=REPO, env=env, capture_output=True,
                        text=True)
  if done.returncode:
    sys.exit(f"worker on {devices} devices failed:\n{done.stderr[-3000:]}")
  results = [json.loads(line) for line in done.stdout.splitlines()
             if line.startswith("{")]
  for r in results:
    print(f"{r['devices']:>3} dev  {r['per_device']:>5}/dev  {r['loss']:<13}"
          f"{r['ms']:>10.2f} ms  {r['flops_per_device'] / 1e6:>12.1f} MFLOP"
          f"  temp {r['temp_bytes'] / 2**20:>8.2f} MiB"
          f"  gathered {r['gathered_bytes'] / 2**20:>8.2f} MiB"
          f"  reduced {r['reduced_bytes']:>8d} B"
          f"  permuted {r['permuted_bytes'] / 2**20:>6.2f} MiB", flush=True)
  return results


def plot(results: list[dict], args, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(2, 3, figsize=(16, 8.4))
  one = [r for r in results if r["devices"] == 1]
  fixed = [r for r in results if r["per_device"] == args.fixed_per_device]
  swept = [r for r in results if r["devices"] == args.sweep_devices]
  panels = [  # (axis, points, x key, y of a point, x label, y label, title)
      (axes[0, 0], one, "per_device", lambda r: r["ms"],
       "per-device batch (1 device)", "loss + grad, ms", "time vs batch"),
      (axes[0, 1], fixed, "devices", lambda r: r["flops_per_device"] / 1e6,
       f"devices ({args.fixed_per_device} rows each)", "MFLOP per device",
       "per-device work vs devices"),
      (axes[0, 2], fixed, "devices",
       lambda r: (r["gathered_bytes"] + r["permuted_bytes"]) / 2**20,
       f"devices ({args.fixed_per_device} rows each)",
       "MiB all-gathered or permuted, per device",
       "communication vs devices"),
      (axes[1, 0], fixed, "devices", lambda r: r["temp_bytes"] / 2**20,
       f"devices ({args.fixed_per_device} rows each)",
       "peak temporaries per device, MiB", "memory vs devices"),
      (axes[1, 1], swept, "per_device", lambda r: r["temp_bytes"] / 2**20,
       f"per-device batch ({args.sweep_devices} devices)",
       "peak temporaries per device, MiB", "memory vs per-device batch"),
      (axes[1, 2], fixed, "devices", lambda r: r["ms"],
       f"devices ({args.fixed_per_device} rows each)",
       "loss + grad, ms (devices share the cores)", "time vs devices")]
  for ax, points, x, y, xlabel, ylabel, title in panels:
    for name in LOSS_NAMES:
      rs = sorted((r for r in points if r["loss"] == name),
                  key=lambda r: r[x])
      ax.plot([r[x] for r in rs], [y(r) for r in rs],
              "o--" if name.endswith("/ring") else "o-", label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if x == "per_device":
      ax.set_xscale("log", base=2)
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(f"contrastive loss cost, embeddings of width {args.dim}")
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--per_device", type=int, nargs="+",
                      default=[64, 256, 1024, 4096, 8192])
  parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
  parser.add_argument("--fixed_per_device", type=int, default=1024)
  parser.add_argument("--sweep_devices", type=int, default=4,
                      help="the device count of the per-device batch sweep")
  parser.add_argument("--sweep_per_device", type=int, nargs="+",
                      default=[256, 512, 1024, 2048])
  parser.add_argument("--dim", type=int, default=256,
                      help="embedding width (the demo's proj_dim)")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--out", default=os.path.join(REPO, "bench",
                                                     "loss_scaling"))
  parser.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._worker:
    sys.path.insert(0, REPO)
    return worker(args)
  results = run_sweep(1, sorted(set(args.per_device)
                                | {args.fixed_per_device}), args)
  for devices in args.devices:
    if devices == args.sweep_devices:
      results += run_sweep(devices, sorted(set(args.sweep_per_device)
                                           | {args.fixed_per_device}), args)
    elif devices != 1:
      results += run_sweep(devices, [args.fixed_per_device], args)
  with open(args.out + ".json", "w") as f:
    json.dump(results, f, indent=1)
  plot(results, args, args.out + ".png")
  print(f"wrote {args.out}.png and {args.out}.json")


if __name__ == "__main__":
  main()
