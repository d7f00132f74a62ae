r"""LaCLIP's text augmentation on the embedded set: the demo trained with and
without rule-based caption rewrites, zero-shot with the usual prompts and
with held-out phrasings, over seeds.

  python experiments/laclip_rules.py [--seeds=0,1,2] [--root=DIR]
  # ~35 min on 2 cores

Rewrites come from `python -m cliplite_jax.rewrite --model=rules --num=4`
(4 per caption). Each run is the demo (`configs/default.py`, 1000 steps)
with `--config.seed=S` and, for "rules", `--config.data.rewrites`. The usual
prompts are the dataset's ("a picture of a {}." / "a picture of a {} shape.",
close to the training captions' wording); the held-out ones share no
framing word with the captions or the rules' rewrites.

The baseline ("none") is always trained by the same invocation as the
treatment, on the same commit: runs live under ROOT/<commit>, so a rerun
after any code change trains both rows again (a rerun on the same commit
skips the finished runs). Prints mean ± sample std per row and the paired
difference rules − none with its 95 % t interval, and writes
experiments/laclip_rules.json with the commit and the CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

import runs

STEPS = 1000
CONDITIONS = ("none", "rules")
HELD_OUT = {
    "shape": ("this illustration contains a {}.", "look, a {}!",
              "something shaped like a {}.", "the main object is a {}."),
    "color": ("this illustration contains a {} object.", "look, something {}!",
              "an object coloured {}.", "the main object is {}."),
}
USUAL = {"shape": "zeroshot/shapes_captions/top1",
         "color": "zeroshot/shapes_captions_color/top1"}


def _run(command: list[str]) -> None:
  done = subprocess.run(command, cwd=runs.REPO)
  if done.returncode:
    sys.exit(f"failed (exit {done.returncode}): {' '.join(command)}")


def code_version() -> str:
  """The commit the runs are trained with, "-dirty" when the tree has
  uncommitted changes to tracked files."""
  def git(*args):
    return subprocess.run(["git", *args], cwd=runs.REPO, capture_output=True,
                          text=True, check=True).stdout.strip()
  dirty = git("status", "--porcelain", "--untracked-files=no")
  return git("rev-parse", "--short=12", "HEAD") + ("-dirty" if dirty else "")


def cpu_model() -> str:
  """The CPU's model name (float results differ between CPUs)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


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
  try:
    seeds = [int(s) for s in args.seeds.split(",")]
  except ValueError:
    parser.error(f"--seeds={args.seeds!r}: comma-separated integers")
  if len(set(seeds)) != len(seeds) or len(seeds) < 2:
    parser.error(f"--seeds={args.seeds!r}: at least two distinct seeds")
  version = code_version()
  if version.endswith("-dirty"):
    print(f"note: uncommitted changes; runs go under {version} and are "
          "retrained after a commit", file=sys.stderr)
  study = os.path.join(args.root, version)
  os.makedirs(study, exist_ok=True)
  rewrites = os.path.join(study, "rules.json")
  if not os.path.exists(rewrites):
    _run([sys.executable, "-m", "cliplite_jax.rewrite",
          "--data=shapes_captions", "--model=rules", f"--out={rewrites}",
          "--num=4"])
  results = {}
  for seed in seeds:  # baseline and treatment side by side, seed by seed
    for condition in CONDITIONS:
      extra = ([f"--config.data.rewrites={rewrites}"]
               if condition == "rules" else [])
      workdir = os.path.join(study, f"{condition}_seed{seed}")
      final = runs.train(workdir, "configs/default.py", STEPS, seed, extra)
      row = {f"usual/{task}": final[key] for task, key in USUAL.items()}
      row.update({f"held_out/{task}": v
                  for task, v in held_out_zeroshot(workdir).items()})
      row["linear"] = final["linear/shapes_captions/top1"]
      row["t2i_r10"] = final["retrieval/shapes_captions/t2i_r10"]
      results[f"{condition}/{seed}"] = row
  columns = list(next(iter(results.values())))
  per_condition = {c: [results[f"{c}/{s}"] for s in seeds] for c in CONDITIONS}
  summary = {c: {col: runs.mean_std(rows, col) for col in columns}
             for c, rows in per_condition.items()}
  difference = {col: runs.paired_difference(
      [r[col] for r in per_condition["rules"]],
      [r[col] for r in per_condition["none"]]) for col in columns}
  table = [[c] + ["{:.3f} ± {:.3f}".format(*summary[c][col])
                  for col in columns] for c in CONDITIONS]
  table.append(["rules − none"] + [
      "{mean:+.3f} [{low:+.3f}, {high:+.3f}]".format(**difference[col])
      for col in columns])
  print(f"mean ± sample std over seeds {seeds}; the difference row is the "
        "paired mean with its 95 % t interval")
  print(runs.markdown_table(["rewrites"] + columns, table))
  out = os.path.join(runs.HERE, "laclip_rules.json")
  with open(out, "w") as f:
    json.dump({"commit": version, "cpu": cpu_model(), "steps": STEPS,
               "seeds": seeds, "held_out_templates": HELD_OUT,
               "runs": results, "mean_std": summary,
               "std": "sample (ddof 1)",
               "difference_rules_minus_none": difference}, f, indent=1)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
