"""A benchmark suite (`eval.suite`): the zero-shot benchmark's sets a user
has prepared, scored with the configured probes, then averaged.

Sets that are missing (not prepared under `data.data_dir`, or not in TFDS
at all) are listed in one line each and skipped: a suite never fails for
want of a dataset. The results are the probes' own metrics per set, plus
"suite/<suite>/zeroshot_top1" (and top5) — the mean over the scored sets of
their zero-shot accuracy with CLIP's class names and templates averaged
(CIFAR-10's "clip" task beside the paper's single template; top-1
everywhere, where CLIP reports mean per-class accuracy for Pets, Flowers,
Caltech-101 and Aircraft) — and "suite/<suite>/sets", the number scored; a
Markdown table of them is written beside the results JSON.
"""
from __future__ import annotations

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from cliplite_jax.data import benchmark_sets, sources


def name(config: ml_collections.ConfigDict) -> str:
  """The suite `config` runs ("" for none: configs saved before suites
  existed run none)."""
  return config.eval.get("suite", "") or ""


def availability(config: ml_collections.ConfigDict,
                 fits: bool) -> tuple[list[str], list[str]]:
  """(the suite's sets that can be read, one line per set that cannot).

  A set can be read when its scored split (and with `fits`, a probe that
  trains, its fitting split) opens under `config.data.data_dir`. Process 0
  decides for every process, so that all of them score the same sets."""
  present, missing = [], []
  keys = benchmark_sets.SUITES.get(name(config), ())
  sets = benchmark_sets.all_sets()
  for key in keys:
    entry = sets[key]
    if key not in sources.SOURCES:
      missing.append(
          f"{key} ({entry.title}): not in TFDS; {entry.manual} It can be "
          f"scored as a transfer set (not in the suite's mean): prepare a "
          f"folder per class with `python -m cliplite_jax.prepare`, its "
          f"--class_names and --templates written from "
          f"cliplite_jax/data/benchmark/{key}.json, and add its path to "
          f"eval.transfer")
      continue
    source = sources.SOURCES[key]
    splits = [source.eval_split] + (
        [source.fit_split] if fits and source.linear_label else [])
    try:
      for split in dict.fromkeys(splits):
        sources.open_split(key, split, config.data.data_dir)
    except (sources.DatasetNotPreparedError, ValueError) as e:
      missing.append(f"{key} ({entry.title}): {str(e).splitlines()[0]}")
      continue
    present.append(key)
  if jax.process_count() > 1:
    readable = multihost_utils.broadcast_one_to_all(
        np.array([k in present for k in keys]))
    present = [k for k, ok in zip(keys, readable) if ok]
  return present, missing


def headline_key(key: str, top: str = "top1") -> str:
  """The metric of `key`'s zero-shot with CLIP's class names and
  templates."""
  task = "_clip" if "clip" in sources.SOURCES[key].zeroshot else ""
  return f"zeroshot/{key}{task}/{top}"


def summary(config: ml_collections.ConfigDict,
            metrics: dict[str, float]) -> dict[str, float]:
  """The suite's means over the sets `metrics` scored (float per key)."""
  suite = name(config)
  scored = [k for k in benchmark_sets.SUITES.get(suite, ())
            if k in sources.SOURCES and headline_key(k) in metrics]
  if not scored:
    return {}
  out = {f"suite/{suite}/sets": float(len(scored))}
  for top in ("top1", "top5"):
    values = [metrics[headline_key(k, top)] for k in scored
              if headline_key(k, top) in metrics]
    if values:
      out[f"suite/{suite}/zeroshot_{top}"] = float(np.mean(values))
  return out


def markdown(config: ml_collections.ConfigDict, step: int,
             metrics: dict[str, float]) -> str:
  """The suite's table: one row per scored set (zero-shot top-1 and top-5
  under CLIP's templates, and the other probes' headline numbers when they
  ran), then the mean."""
  suite = name(config)
  keys = [k for k in benchmark_sets.SUITES[suite]
          if k in sources.SOURCES and headline_key(k) in metrics]
  extra = sorted({m.split("/", 2)[2] for m in metrics
                  for k in keys if m.startswith((f"fewshot/{k}/",
                                                 f"linear/{k}/"))
                  and not m.endswith("_std")})
  columns = ["zero-shot top-1", "top-5"] + [
      f"{probe} {metric}" for probe in ("fewshot", "linear")
      for metric in extra
      if any(f"{probe}/{k}/{metric}" in metrics for k in keys)]
  lines = [f"# {suite} at step {step}", "",
           "| set | " + " | ".join(columns) + " |",
           "|---" * (len(columns) + 1) + "|"]
  for k in keys:
    cells = [metrics.get(headline_key(k)), metrics.get(headline_key(k, "top5"))]
    cells += [metrics.get(f"{c.split()[0]}/{k}/{c.split()[1]}")
              for c in columns[2:]]
    lines.append(f"| {sources.SOURCES[k].title or k} | " + " | ".join(
        "" if v is None else f"{v:.4f}" for v in cells) + " |")
  mean = summary(config, metrics)
  lines.append(f"| **mean of {len(keys)}** | " + " | ".join(
      f"{mean[f'suite/{suite}/zeroshot_{t}']:.4f}"
      if f"suite/{suite}/zeroshot_{t}" in mean else ""
      for t in ("top1", "top5")) + " |" * (len(columns) - 1))
  return "\n".join(lines) + "\n"


def write_markdown(workdir: str, step: int, config: ml_collections.ConfigDict,
                   metrics: dict[str, float]) -> str | None:
  """WORKDIR/eval/step_N_<suite>.md (`markdown`), when the config runs a
  suite and a set of it was scored; returns its path."""
  suite = name(config)
  if not suite or not summary(config, metrics):
    return None
  path = epath.Path(workdir) / "eval" / f"step_{step}_{suite}.md"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(markdown(config, step, metrics))
  return str(path)
