r"""Every two-tower objective on the embedded set, over seeds: the demo's
model, data, steps and batch, only the loss changed.

  python bench/objectives_shapes.py [--seeds=0,1,2] [--root=DIR]
  # ~3.5 min per run on 2 cores: 6 objectives × 3 seeds ≈ 1 hour

Each run is `python -m cliplite_jax.main --config=CONFIG --config.seed=S`
with CONFIG from OBJECTIVES below (configs/default.py for CLIP-Lite, the
baselines' `:data=shapes`). Prints a Markdown table of mean ± std over
seeds and writes bench/objectives_shapes.json. Workdirs stay under --root:
rerunning skips finished runs.
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
OBJECTIVES = {
    "jsd (CLIP-Lite)": ["--config=configs/default.py"],
    "infonce (CLIP)": ["--config=configs/clip_baseline.py:data=shapes"],
    "sigmoid (SigLIP)": ["--config=configs/siglip_baseline.py:data=shapes"],
    "nclip": ["--config=configs/nclip_baseline.py:data=shapes"],
    "xclip": ["--config=configs/xclip_baseline.py:data=shapes"],
    "jsd_nclip": ["--config=configs/default.py",
                  "--config.loss.name=jsd_nclip"],
}
COLUMNS = {
    "zero-shot shape": "zeroshot/shapes_captions/top1",
    "zero-shot colour": "zeroshot/shapes_captions_color/top1",
    "linear": "linear/shapes_captions/top1",
    "SVM mAP": "svm/shapes_captions/map",
    "i2t R@5": "retrieval/shapes_captions/i2t_r5",
    "t2i R@5": "retrieval/shapes_captions/t2i_r5",
    "modality gap": "gap/shapes_captions/modality_gap",
}


def run(root: str, name: str, seed: int) -> dict[str, float]:
  """Trains (unless done) and returns the final evaluation metrics."""
  tag = name.split()[0]
  workdir = os.path.join(root, f"{tag}_seed{seed}")
  result = os.path.join(workdir, "eval", f"step_{STEPS}.json")
  if not os.path.exists(result):
    print(f"--- {name}, seed {seed}: {workdir}", flush=True)
    command = [sys.executable, "-m", "cliplite_jax.main",
               f"--workdir={workdir}", f"--config.seed={seed}",
               f"--config.total_steps={STEPS}", *OBJECTIVES[name]]
    done = subprocess.run(command, cwd=REPO)
    if done.returncode:
      sys.exit(f"failed (exit {done.returncode}): {' '.join(command)}")
  with open(result) as f:
    return json.load(f)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--root", default=os.path.join(
      tempfile.gettempdir(), "cliplite_objectives"))
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  table = {name: [run(args.root, name, s) for s in seeds]
           for name in OBJECTIVES}
  summary = {name: {col: (float(np.mean([r[key] for r in runs])),
                          float(np.std([r[key] for r in runs])))
                    for col, key in COLUMNS.items()}
             for name, runs in table.items()}
  print(f"\n{STEPS} steps, batch 64, seeds {seeds} (mean ± std)\n")
  print("| objective | " + " | ".join(COLUMNS) + " |")
  print("|---" * (len(COLUMNS) + 1) + "|")
  for name, cols in summary.items():
    print(f"| {name} | " + " | ".join(f"{m:.3f} ± {s:.3f}"
                                        for m, s in cols.values()) + " |")
  out = os.path.join(REPO, "bench", "objectives_shapes.json")
  with open(out, "w") as f:
    json.dump({"steps": STEPS, "seeds": seeds, "mean_std": summary,
               "runs": {n: dict(zip(map(str, seeds), r))
                        for n, r in table.items()}}, f, indent=1)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
