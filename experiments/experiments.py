r"""The paper's claims as declared grids: objective × batch × data fraction ×
steps × seed, learning rates chosen on the validation split, scored on test.

  python experiments/experiments.py STUDY [--seeds=0,1,2] [--root=DIR]
      [--dry_run]
  python experiments/experiments.py batch     # JSD / InfoNCE / SigLIP, 16-128
  python experiments/experiments.py fraction  # JSD / InfoNCE, 10-100 % of images
  python experiments/experiments.py images    # batch 16-128, equal images seen
  python experiments/experiments.py steps     # the batch study's 64, 3 lengths
  python experiments/experiments.py batch --only=infonce_b128  # one condition
  python experiments/experiments.py batch --only=jsd_b16,jsd_b64 \
      --steps_scale=0.6
  python experiments/experiments.py collect --root=DIR  # any workdirs' evals

Learning rates are chosen per objective and batch: every scale of the
grid trains seed 0 at full data and the base schedule (500 steps, half
the demo's, × --steps_scale) and is scored on the **validation** split (while
the best is at the grid's edge, the next scale beyond it is tried, down to
×1/32 or up to ×32); the best
(by the mean zero-shot top-1) is kept for every data fraction and schedule
length of that objective and batch. Each seed then trains at that rate and
is scored on **test** (a run already trained is re-evaluated, not
retrained). Every run is `python -m cliplite_jax.main` in its own workdir
under --root, named by everything that sets it, so studies share runs (the
batch study's batch 64 is the fraction study's 100 %) and rerunning a study
continues where it stopped. Results: ROOT/results.jsonl (one record per run
and split), experiments/results/STUDY.json (mean ± sample std per condition),
experiments/results/STUDY.md (the table) and experiments/results/STUDY.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

import runs
from experiment_inputs import Ledger, positive_scale, seed_list

# The demo (configs/default.py) at half its 1000 steps, so a cell costs about
# a minute on 2 CPU cores (--steps_scale stretches or shrinks every study).
BASE = "configs/default.py"
BASE_STEPS = 500
METRICS = {
    "zero-shot shape": "zeroshot/shapes_captions/top1",
    "zero-shot colour": "zeroshot/shapes_captions_color/top1",
    "linear": "linear/shapes_captions/top1",
    "SVM mAP": "svm/shapes_captions/map",
    "i2t R@1": "retrieval/shapes_captions/i2t_r1",
    "i2t R@10": "retrieval/shapes_captions/i2t_r10",
    "t2i R@1": "retrieval/shapes_captions/t2i_r1",
    "t2i R@10": "retrieval/shapes_captions/t2i_r10",
    "modality gap": "gap/shapes_captions/modality_gap",
}
# Chosen on validation: the mean of the two zero-shot tasks.
SELECT = ("zeroshot/shapes_captions/top1", "zeroshot/shapes_captions_color/top1")
# Past the grid's edge, at most ×1/32 or ×32 of the demo's rates.
MAX_WIDENINGS = 4
OBJECTIVE_CONFIGS = {"jsd": [],
                     "infonce": ["--config.loss.name=infonce"],
                     "sigmoid": ["--config.loss.name=sigmoid",
                                 "--config.model.init_temperature=0.1"]}


@dataclasses.dataclass(frozen=True)
class Condition:
  """One cell of a study but its seed and learning rate."""
  objective: str
  batch: int = 64
  accum: int = 1
  fraction: float = 1.0
  steps: int = BASE_STEPS

  @property
  def name(self) -> str:
    return (f"{self.objective}_b{self.batch}"
            + (f"x{self.accum}" if self.accum > 1 else "")
            + (f"_f{self.fraction:g}" if self.fraction < 1 else "")
            + f"_s{self.steps}")

  def tuning(self, base_steps: int) -> "Condition":
    """The cell whose validation runs choose this one's learning rate: the
    same objective and batch, at full data and `base_steps`."""
    return dataclasses.replace(self, fraction=1.0, steps=base_steps)

  def overrides(self, lr_scale: float) -> list[str]:
    """Command-line overrides of BASE for this cell at `lr_scale` × the
    demo's learning rates."""
    return [*OBJECTIVE_CONFIGS[self.objective],
            f"--config.batch_size={self.batch}",
            f"--config.accum_steps={self.accum}",
            f"--config.data.fraction={self.fraction}",
            f"--config.optim.warmup_steps={max(1, self.steps // 10)}",
            f"--config.checkpoint_every_steps={self.steps}",
            f"--config.log_every_steps={max(1, self.steps // 5)}",
            f"--config.optim.lr.image={0.2 * lr_scale:g}",
            f"--config.optim.lr.text={0.1 * lr_scale:g}",
            f"--config.optim.lr.other={0.1 * lr_scale:g}"]


@dataclasses.dataclass(frozen=True)
class Study:
  """A declared grid: its conditions, the learning-rate scales tried on
  validation, and what the table's rows are grouped by."""
  conditions: tuple[Condition, ...]
  lr_scales: tuple[float, ...] = (0.5, 1.0, 2.0)
  about: str = ""


STUDIES = {
    # Objectives inner: a study cut short still compares them at each batch.
    "batch": Study(tuple(
        Condition(o, batch=b, accum=2 if b == 128 else 1)
        for b in (16, 32, 64, 128) for o in ("jsd", "infonce", "sigmoid")),
        about="equal steps; batch 128 as 2 micro-batches of 64 (InfoNCE and "
              "SigLIP with cached features: all 127 negatives)"),
    # Equal images seen: batch 64's budget of images at every batch.
    "images": Study(tuple(
        Condition(o, batch=b, accum=2 if b == 128 else 1,
                  steps=BASE_STEPS * 64 // b)
        for b in (16, 32, 64, 128) for o in ("jsd", "infonce", "sigmoid")),
        about="equal images seen (batch × steps), as many as batch 64's"),
    "fraction": Study(tuple(
        Condition(o, fraction=f) for f in (0.1, 0.25, 0.5, 1.0)
        for o in ("jsd", "infonce")),
        about="batch 64, equal steps: smaller fractions repeat images more"),
    "steps": Study(tuple(
        Condition(o, steps=s) for s in (BASE_STEPS // 2, BASE_STEPS,
                                        BASE_STEPS * 2)
        for o in ("jsd", "infonce", "sigmoid")),
        about="batch 64 at three schedule lengths"),
}


def _evaluate_on(workdir: str, step: int, split: str) -> dict[str, float]:
  """Scores WORKDIR's step on `split` (the training run scored another)."""
  command = [sys.executable, "-m", "cliplite_jax.evaluate",
             f"--workdir={workdir}", f"--step={step}",
             f"--config.eval.split={split}"]
  done = subprocess.run(command, cwd=runs.REPO)
  if done.returncode:
    sys.exit(f"failed (exit {done.returncode}): {' '.join(command)}")
  with open(os.path.join(workdir, "eval", f"step_{step}.json")) as f:
    return json.load(f)


def score(ledger: Ledger, root: str, cond: Condition, lr_scale: float,
          seed: int, split: str) -> dict:
  """The record of `cond` at `lr_scale` and `seed` scored on `split`,
  training and evaluating only what is missing."""
  run = f"{cond.name}_lr{lr_scale:g}_seed{seed}"
  found = ledger.find(run, split)
  if found:
    return found
  workdir = os.path.join(root, run)
  start = time.time()
  if os.path.exists(os.path.join(workdir, "eval", f"step_{cond.steps}.json")):
    metrics = _evaluate_on(workdir, cond.steps, split)
  else:
    metrics = runs.train(workdir, BASE, cond.steps, seed,
                         cond.overrides(lr_scale)
                         + [f"--config.eval.split={split}"])
  return ledger.add({"run": run, "split": split, "seed": seed,
                     "lr_scale": lr_scale, "seconds": time.time() - start,
                     **dataclasses.asdict(cond), "metrics": metrics})


def selection(record: dict) -> float:
  return sum(record["metrics"][k] for k in SELECT) / len(SELECT)


def _scaled(steps: int, steps_scale: float) -> int:
  return max(2, round(steps * steps_scale))


def run_study(name: str, seeds: list[int], root: str,
              dry_run: bool = False, steps_scale: float = 1.0,
              only: str = "", out: str | None = None) -> dict:
  """Tunes, trains and scores every condition (whose name contains one of
  the comma-separated `only`); returns the summary, also written to `out`
  (see `write`) after each condition."""
  study = STUDIES[name]
  base_steps = _scaled(BASE_STEPS, steps_scale)
  study = dataclasses.replace(study, conditions=tuple(
      dataclasses.replace(c, steps=_scaled(c.steps, steps_scale))
      for c in study.conditions
      if any(part in c.name for part in only.split(","))))
  if not study.conditions:
    raise ValueError(f"no condition of the {name} study matches "
                     f"--only={only}")
  if dry_run:
    for cond in study.conditions:
      tuning = cond.tuning(base_steps)
      print(f"{cond.name}: seeds {seeds} on test at the learning rate "
            f"chosen by {tuning.name} on validation, from")
      for lr in study.lr_scales:
        print(f"  lr×{lr:g}: python -m cliplite_jax.main --config={BASE} "
              f"--config.total_steps={tuning.steps} "
              + " ".join(tuning.overrides(lr)))
    return {}
  os.makedirs(root, exist_ok=True)
  ledger = Ledger(os.path.join(root, "results.jsonl"))
  summary = {}
  for cond in study.conditions:
    tuning = cond.tuning(base_steps)
    tuned = {lr: score(ledger, root, tuning, lr, seeds[0], "validation")
             for lr in study.lr_scales}
    best = max(tuned, key=lambda lr: selection(tuned[lr]))
    # A best rate at the grid's edge may not be the best rate: step past that
    # edge until the best is inside the grid, MAX_WIDENINGS times at most.
    for _ in range(MAX_WIDENINGS):
      if best not in (min(tuned), max(tuned)):
        break
      wider = best / 2 if best == min(tuned) else best * 2
      tuned[wider] = score(ledger, root, tuning, wider, seeds[0], "validation")
      best = max(tuned, key=lambda lr: selection(tuned[lr]))
    tests = [score(ledger, root, cond, best, s, "test") for s in seeds]
    summary[cond.name] = {
        "condition": dataclasses.asdict(cond), "lr_scale": best,
        "tuned_on": tuning.name,
        "seconds": {r["run"] + "/" + r["split"]: r["seconds"]
                    for r in [*tuned.values(), *tests]},
        "validation": {f"{lr:g}": selection(r) for lr, r in tuned.items()},
        "seeds": seeds,
        "test": {col: runs.mean_std([r["metrics"] for r in tests], key)
                 for col, key in METRICS.items()}}
    if out:
      write(name, summary, out)
  return summary


def write(name: str, summary: dict, out_dir: str) -> None:
  """experiments/results/NAME.{json,md,png}."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
    json.dump(summary, f, indent=1)
  rows = [[key.rsplit("_s", 1)[0] + f" ({c['condition']['steps']} steps)",
           f"×{c['lr_scale']:g}"]
          + [f"{m:.3f} ± {s:.3f}" for m, s in c["test"].values()]
          for key, c in summary.items()]
  table = (_spread_label(summary) + "\n\n"
           + runs.markdown_table(["condition", "lr"] + list(METRICS), rows))
  with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
    f.write(table + "\n\n" + _tuning_table(summary) + "\n\n"
            + _cost(summary) + "\n")
  print(table)
  _plot(name, summary, os.path.join(out_dir, f"{name}.png"))


def _spread_label(summary: dict) -> str:
  """The line above a results table: what its ± is."""
  seeds = {tuple(c["seeds"]) for c in summary.values()}
  over = (f"{len(next(iter(seeds)))} seeds ("
          + ", ".join(map(str, next(iter(seeds)))) + ")"
          if len(seeds) == 1 else "each condition's seeds")
  return f"Test split, mean ± sample std (ddof 1) over {over}."


def _cost(summary: dict) -> str:
  """How many runs the study's table rests on and their wall time (each
  training or re-evaluation once, also where conditions share it)."""
  seconds = {run: t for c in summary.values()
             for run, t in c.get("seconds", {}).items()}
  return (f"{len(seconds)} training runs or re-evaluations, "
          f"{sum(seconds.values()) / 60:.0f} minutes of wall time as recorded "
          "when each ran.")


def _tuning_table(summary: dict) -> str:
  """Each tuning run's mean zero-shot top-1 on validation (seed 0) at
  every learning-rate scale, the chosen one in bold."""
  tuned = {c["tuned_on"]: (c["validation"], f"{c['lr_scale']:g}")
           for c in summary.values()}
  scales = sorted({lr for grid, _ in tuned.values() for lr in grid}, key=float)
  rows = [[run] + [(f"**{grid[lr]:.3f}**" if lr == best else f"{grid[lr]:.3f}")
                   if lr in grid else "" for lr in scales]
          for run, (grid, best) in tuned.items()]
  return runs.markdown_table(
      ["learning rate chosen on (validation, seed 0)"]
      + [f"×{lr}" for lr in scales], rows)


def _plot(name: str, summary: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  axis = {"batch": "batch", "images": "batch", "fraction": "fraction",
          "steps": "steps"}[name]
  shown = ("zero-shot shape", "zero-shot colour", "linear", "i2t R@10")
  fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.6))
  objectives = sorted({c["condition"]["objective"] for c in summary.values()})
  for ax, column in zip(axes, shown):
    for objective in objectives:
      cells = sorted((c["condition"][axis], *c["test"][column])
                     for c in summary.values()
                     if c["condition"]["objective"] == objective)
      xs, means, stds = zip(*cells)
      ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3,
                  label=objective)
    ax.set(xscale="log", xlabel=axis, title=column)
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
  axes[0].legend()
  fig.suptitle(f"{name}: mean ± sample std over seeds, test split")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def collect(root: str) -> str:
  """A table of every finished run under ROOT (e.g. launch/coco_ablations.sh's),
  grouped by workdir name without its "_seed<S>": mean ± sample std (ddof 1)
  over seeds of each run's final evaluation on its config's eval split."""
  groups = {}
  for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    config_path = os.path.join(root, name, "config.json")
    if not os.path.exists(config_path):
      continue
    with open(config_path) as f:
      steps = json.load(f)["total_steps"]
    result = os.path.join(root, name, "eval", f"step_{steps}.json")
    if os.path.exists(result):
      with open(result) as f:
        groups.setdefault(name.rsplit("_seed", 1)[0], []).append(json.load(f))
  if not groups:
    raise ValueError(f"no finished run under {root}")
  keys = sorted({k for results in groups.values() for r in results for k in r
                 if k.startswith(("zeroshot/", "retrieval/", "linear/", "svm/",
                                  "gap/"))})
  rows = [[group, str(len(results))] + [
      "{:.3f} ± {:.3f}".format(*runs.mean_std(results, k))
      if all(k in r for r in results) else "" for k in keys]
          for group, results in groups.items()]
  table = ("mean ± sample std (ddof 1) over each group's seeds\n\n"
           + runs.markdown_table(["runs", "seeds"] + keys, rows))
  print(table)
  return table


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("study", choices=sorted(STUDIES) + ["collect"],
                      help="a study, or collect: tabulate the runs under "
                           "--root (e.g. launch/coco_ablations.sh's)")
  parser.add_argument("--seeds", default="0,1,2", type=seed_list,
                      help="comma-separated seeds; the first tunes")
  parser.add_argument("--root", default=os.path.join(
      tempfile.gettempdir(), "cliplite_experiments"))
  parser.add_argument("--out", default=os.path.join(runs.HERE, "results"))
  parser.add_argument("--dry_run", action="store_true",
                      help="print every tuning command and exit")
  parser.add_argument("--steps_scale", type=positive_scale, default=1.0,
                      help="every run's steps × this (0.02: a smoke test)")
  parser.add_argument("--only", default="",
                      help="the conditions whose name contains one of these "
                           "comma-separated strings")
  args = parser.parse_args()
  try:
    if args.study == "collect":
      collect(args.root)
    else:
      run_study(args.study, args.seeds, args.root, args.dry_run,
                args.steps_scale, args.only, args.out)
  except ValueError as e:
    parser.error(str(e))


if __name__ == "__main__":
  main()
