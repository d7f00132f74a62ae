r"""LaCLIP's text augmentation on the embedded set: the demo trained with and
without rule-based caption rewrites, zero-shot with the usual prompts and
with held-out phrasings, over seeds.

  python bench/laclip_rules.py [--seeds=0,1,2] [--root=DIR]   # ~21 min, 2 cores

Rewrites come from `python -m cliplite_jax.rewrite --model=rules --num=4`
(4 per caption). Each run is the demo (`configs/default.py`, 1000 steps)
with `--config.seed=S` and, for "rules", `--config.data.rewrites`. The usual
prompts are the dataset's ("a picture of a {}." / "a picture of a {} shape.",
close to the training captions' wording); the held-out ones share no
framing word with the captions or the rules' rewrites. Prints a table of
mean ± std over seeds and writes bench/laclip_rules.json. Workdirs stay
under --root: rerunning skips finished runs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
STEPS = 1000
HELD_OUT = {
    "shape": ("this illustration contains a {}.", "look, a {}!",
              "something shaped like a {}.", "the main object is a {}."),
    "color": ("this illustration contains a {} object.", "look, something {}!",
              "an object coloured {}.", "the main object is {}."),
}
USUAL = {"shape": "zeroshot/shapes_captions/top1",
         "color": "zeroshot/shapes_captions_color/top1"}


def _run(command: list[str]) -> None:
  done = subprocess.run(command, cwd=REPO)
  if done.returncode:
    sys.exit(f"failed (exit {done.returncode}): {' '.join(command)}")


def train(root: str, condition: str, seed: int, rewrites: str) -> str:
  workdir = os.path.join(root, f"{condition}_seed{seed}")
  if os.path.exists(os.path.join(workdir, "eval", f"step_{STEPS}.json")):
    return workdir
  print(f"--- {condition}, seed {seed}: {workdir}", flush=True)
  command = [sys.executable, "-m", "cliplite_jax.main",
             "--config=configs/default.py", f"--workdir={workdir}",
             f"--config.seed={seed}"]
  if condition == "rules":
    command.append(f"--config.data.rewrites={rewrites}")
  _run(command)
  return workdir


def held_out_zeroshot(workdir: str) -> dict[str, float]:
  """Top-1 on the test split with the HELD_OUT templates (averaged)."""
  import cliplite_jax
  from cliplite_jax.data import shapes
  from cliplite_jax.probes import zeroshot
  model = cliplite_jax.load(workdir)
  test = model.encode_split("shapes_captions", "test")
  out = {}
  for task, classes, label in (("shape", shapes.SHAPES, "largest_shape"),
                               ("color", shapes.COLOR_NAMES,
                                "largest_color")):
    templates = HELD_OUT[task]
    prompts = [t.format(c) for c in classes for t in templates]
    class_emb = zeroshot.class_embeddings(model.encode_texts(prompts).reshape(
        len(classes), len(templates), -1))
    out[task] = float(zeroshot.accuracy(test["embeddings"], class_emb,
                                        test[label])["top1"])
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--root", default=os.path.join(tempfile.gettempdir(),
                                                     "cliplite_laclip"))
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  os.makedirs(args.root, exist_ok=True)
  rewrites = os.path.join(args.root, "rules.json")
  if not os.path.exists(rewrites):
    _run([sys.executable, "-m", "cliplite_jax.rewrite",
          "--data=shapes_captions", "--model=rules", f"--out={rewrites}",
          "--num=4"])
  results = {}
  for condition in ("none", "rules"):
    for seed in seeds:
      workdir = train(args.root, condition, seed, rewrites)
      with open(os.path.join(workdir, "eval", f"step_{STEPS}.json")) as f:
        final = json.load(f)
      row = {f"usual/{task}": final[key] for task, key in USUAL.items()}
      row.update({f"held_out/{task}": v
                  for task, v in held_out_zeroshot(workdir).items()})
      row["linear"] = final["linear/shapes_captions/top1"]
      row["t2i_r10"] = final["retrieval/shapes_captions/t2i_r10"]
      results[f"{condition}/{seed}"] = row
  columns = list(next(iter(results.values())))
  print("| rewrites | " + " | ".join(columns) + " |")
  print("|---" * (len(columns) + 1) + "|")
  summary = {}
  for condition in ("none", "rules"):
    rows = [results[f"{condition}/{s}"] for s in seeds]
    summary[condition] = {c: (float(np.mean([r[c] for r in rows])),
                              float(np.std([r[c] for r in rows])))
                          for c in columns}
    print(f"| {condition} | " + " | ".join(
        f"{m:.3f} ± {s:.3f}" for m, s in summary[condition].values()) + " |")
  with open(os.path.join(REPO, "bench", "laclip_rules.json"), "w") as f:
    json.dump({"seeds": seeds, "held_out_templates": HELD_OUT,
               "runs": results, "mean_std": summary}, f, indent=1)


if __name__ == "__main__":
  main()
