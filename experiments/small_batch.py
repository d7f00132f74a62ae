r"""The paper's small-batch claim on the embedded set: JSD (one negative per
pair) against InfoNCE (B − 1 negatives) at per-device batch 16, 32, 64.

  python experiments/small_batch.py            # ~14 minutes on 2 cores

Every run is `python -m cliplite_jax.main --config=configs/default.py` on one
device with the same model, data, seed and number of steps; only
`loss.name` and `batch_size` change. Prints a table of zero-shot accuracy and
retrieval recall on the test split and writes experiments/small_batch.png
and experiments/small_batch.json. One run per cell, at the config's seed 0:
the table has no spread over seeds (experiments/objectives_shapes.py and
experiments/experiments.py give mean ± sample std over seeds). Workdirs go under --root (kept:
rerunning resumes and re-evaluates instead of training again).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))  # experiments/
REPO = os.path.dirname(HERE)
METRICS = ("zeroshot/shapes_captions/top1", "retrieval/shapes_captions/i2t_r1",
           "retrieval/shapes_captions/t2i_r1",
           "retrieval/shapes_captions/i2t_r5",
           "retrieval/shapes_captions/t2i_r5")


def train(loss: str, batch: int, args) -> dict[str, float]:
  """Trains and evaluates one run; returns its final eval metrics."""
  workdir = os.path.join(args.root, f"{loss}_b{batch}")
  command = [sys.executable, "-m", "cliplite_jax.main",
             "--config=configs/default.py", f"--workdir={workdir}",
             f"--config.loss.name={loss}", f"--config.batch_size={batch}",
             f"--config.total_steps={args.steps}",
             f"--config.optim.warmup_steps={args.steps // 10}",
             f"--config.checkpoint_every_steps={args.steps}",
             f"--config.log_every_steps={args.steps // 4}",
             "--config.eval.probes=('retrieval','zeroshot')"]
  if args.data_dir:
    command.append(f"--config.data.data_dir={args.data_dir}")
  print(f"--- {loss}, batch {batch}: {workdir}", flush=True)
  # One device, so the per-device batch is the batch.
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  done = subprocess.run(command, cwd=REPO, env=env)
  if done.returncode:
    sys.exit(f"run {loss} batch {batch} failed (exit {done.returncode})")
  with open(os.path.join(workdir, "eval", f"step_{args.steps}.json")) as f:
    return json.load(f)


def plot(rows: list[dict], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  shown = (("zeroshot/shapes_captions/top1", "zero-shot top-1"),
           ("retrieval/shapes_captions/i2t_r1", "image→text R@1"),
           ("retrieval/shapes_captions/t2i_r1", "text→image R@1"))
  fig, axes = plt.subplots(1, len(shown), figsize=(13, 3.8))
  for ax, (key, title) in zip(axes, shown):
    for loss, marker in (("jsd", "o-"), ("infonce", "s--")):
      points = sorted((r["batch"], r[key]) for r in rows if r["loss"] == loss)
      ax.plot(*zip(*points), marker, label=loss)
    ax.set(xscale="log", xlabel="per-device batch", title=title)
    batches = sorted({r["batch"] for r in rows})
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--root", default=os.path.join(
      tempfile.gettempdir(), "cliplite_small_batch"))
  parser.add_argument("--data_dir", default="",
                      help="where shapes_captions is built (config default)")
  parser.add_argument("--out", default=os.path.join(HERE, "small_batch"))
  args = parser.parse_args()
  rows = []
  for batch in args.batches:
    for loss in ("jsd", "infonce"):
      results = train(loss, batch, args)
      rows.append({"loss": loss, "batch": batch,
                   **{k: results[k] for k in METRICS}})
  header = f"{'loss':<8} {'batch':>5} " + " ".join(
      f"{k.split('/')[0][:4]}/{k.split('/')[-1]:>6}" for k in METRICS)
  print(f"\n{args.steps} steps, one run per cell at seed 0 (no spread over "
        f"seeds); test split")
  print(header)
  for r in rows:
    print(f"{r['loss']:<8} {r['batch']:>5} "
          + " ".join(f"{r[k]:>11.3f}" for k in METRICS))
  with open(args.out + ".json", "w") as f:
    json.dump(rows, f, indent=1)
  plot(rows, args.out + ".png")
  print(f"wrote {args.out}.png and {args.out}.json")


if __name__ == "__main__":
  main()
