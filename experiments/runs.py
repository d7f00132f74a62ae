"""Shared by the experiment scripts that train several configs over seeds: one
training run per workdir (skipped when its evaluation exists), and the
mean ± std table."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))  # experiments/
REPO = os.path.dirname(HERE)


def seeds_and_root(doc: str, name: str,
                   default_seeds: str = "0,1,2") -> tuple[list[int], str]:
  """The command line of a study script: --seeds (comma-separated) and
  --root (default: the temporary folder's cliplite_NAME)."""
  parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
  parser.add_argument("--seeds", default=default_seeds)
  parser.add_argument("--root", default=os.path.join(
      tempfile.gettempdir(), f"cliplite_{name}"))
  args = parser.parse_args()
  return [int(s) for s in args.seeds.split(",")], args.root


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
  """Mean and sample standard deviation (ddof 1; 0 for one run) of `key`."""
  values = [r[key] for r in runs]
  return float(np.mean(values)), sample_std(values)


def summarise(results: dict[str, list[dict]], prefix: str,
              targets) -> dict[str, dict[str, tuple[float, float]]]:
  """{run name: {target: (mean, sample std) of PREFIX + target}}."""
  return {name: {t: mean_std(r, prefix + t) for t in targets}
          for name, r in results.items()}


def sample_std(values) -> float:
  """The sample standard deviation (ddof 1) of values; 0.0 for one value."""
  values = np.asarray(values, np.float64)
  return float(np.std(values, ddof=1)) if values.size > 1 else 0.0


# Two-sided 95 % quantiles of Student's t by degrees of freedom (1–10).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def paired_difference(treatment, baseline) -> dict[str, float]:
  """Mean of treatment − baseline over paired runs (same seeds, same
  invocation) with its 95 % t interval: {"mean", "low", "high", "n"}."""
  diff = np.asarray(treatment, np.float64) - np.asarray(baseline, np.float64)
  n = diff.size
  half = (_T975[min(n - 1, len(_T975)) - 1] * sample_std(diff) / np.sqrt(n)
          if n > 1 else float("nan"))
  return {"mean": float(diff.mean()), "low": float(diff.mean() - half),
          "high": float(diff.mean() + half), "n": n}


def binomial_se(accuracy: float, n: int) -> float:
  """Standard error of an accuracy measured on n fixed test examples."""
  return float(np.sqrt(accuracy * (1 - accuracy) / n))


def write_json(name: str, steps: int, seeds: list[int], summary: dict,
               results: dict[str, list[dict]]) -> str:
  """experiments/NAME.json: the summary and every run's metrics by seed."""
  out = os.path.join(HERE, f"{name}.json")
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
