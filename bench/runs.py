"""Shared by the bench scripts that train several configs over seeds: one
training run per workdir (skipped when its evaluation exists), and the
mean ± std table."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def train(workdir: str, config: str, steps: int, seed: int,
          overrides: list[str] = ()) -> dict[str, float]:
  """Trains `config` for `steps` with `--config.seed=seed` into WORKDIR
  (unless it holds that step's evaluation) and returns that evaluation."""
  result = os.path.join(workdir, "eval", f"step_{steps}.json")
  if not os.path.exists(result):
    print(f"--- {config} seed {seed} {' '.join(overrides)}: {workdir}",
          flush=True)
    command = [sys.executable, "-m", "cliplite_jax.main",
               f"--config={config}", f"--workdir={workdir}",
               f"--config.seed={seed}", f"--config.total_steps={steps}",
               *overrides]
    done = subprocess.run(command, cwd=REPO)
    if done.returncode:
      sys.exit(f"failed (exit {done.returncode}): {' '.join(command)}")
  with open(result) as f:
    return json.load(f)


def mean_std(runs: list[dict[str, float]], key: str) -> tuple[float, float]:
  """Mean and (population) standard deviation of `key` over runs."""
  values = [r[key] for r in runs]
  return float(np.mean(values)), float(np.std(values))


def write_json(name: str, steps: int, seeds: list[int], summary: dict,
               results: dict[str, list[dict]]) -> str:
  """bench/NAME.json: the summary and every run's metrics by seed."""
  out = os.path.join(REPO, "bench", f"{name}.json")
  with open(out, "w") as f:
    json.dump({"steps": steps, "seeds": seeds, "mean_std": summary,
               "runs": {n: dict(zip(map(str, seeds), r))
                        for n, r in results.items()}}, f, indent=1)
  print(f"wrote {out}")
  return out


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
  """A Markdown table."""
  lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
  return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
