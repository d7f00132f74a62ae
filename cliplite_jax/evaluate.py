r"""Evaluates a checkpoint with the configured probes.

  python -m cliplite_jax.evaluate --workdir=WORKDIR [--step=N] [--config=FILE]
                                 [--config.eval.KEY=VALUE ...] [--gallery]

Restores the latest (or `--step`) checkpoint of WORKDIR onto the devices at
hand (any count), extracts embeddings with jitted, sharded, batched encoders,
runs the probes of `config.eval.probes`, writes WORKDIR/eval/step_N.json (a
flat JSON object of floats) and prints a table. The config is WORKDIR's
config.json unless --config names another file; `--config.KEY=VALUE`
overrides its evaluation fields (OVERRIDABLE).
"""
from __future__ import annotations

import json
import os
import sys
import time

if __name__ == "__main__":
  from cliplite_jax.training import native_logs
  native_logs.quiet()
  # First, before the heavy imports: this may replace the process once.
  from cliplite_jax.training import host_memory
  host_memory.reexec_with_fast_malloc()

import jax
import ml_collections
import numpy as np
from absl import app, flags
from etils import epath
from jax.sharding import Mesh

from cliplite_jax import cli, config_io, features, run_dir, validation
from cliplite_jax.data import augment, sources, text as text_lib, vectors
from cliplite_jax.models import multimodal, released
from cliplite_jax.objectives import losses
from cliplite_jax.probes import (evaluated, fewshot, modalities, plots, probe_inputs,
                                 registry, suite)
from cliplite_jax.training import optim, parallel

# In the results of a run that keeps a weight EMA: the decay of the EMA the
# probes scored (absent: the weights trained).
EMA_KEY = "weights/ema_decay"


def run_probes(config: ml_collections.ConfigDict, model, variables,
               tokenizer, mesh: Mesh) -> dict[str, float]:
  """Runs the probes of `config.eval.probes` that each evaluated dataset
  supports; returns flat {"probe/dataset/metric": float}, and EMA_KEY when
  the run keeps a weight EMA (`variables`, from `TrainState.variables`, are
  then the EMA's). A `MultiModal` model is scored by predicting each
  modality from the others."""
  if multimodal.is_multimodal(config):
    metrics = modalities.evaluate(config, model, variables, mesh, tokenizer)
  else:
    metrics = _two_tower_probes(config, model, variables, tokenizer, mesh)
  if metrics and optim.ema_decay(config):
    metrics[EMA_KEY] = optim.ema_decay(config)
  return {k: float(v) for k, v in sorted(metrics.items())}


def _add_absent_eval_fields(config: ml_collections.ConfigDict) -> None:
  """Gives a config saved before the suite and the few-shot probe existed
  their defaults, so that `--config.eval.suite=...` and
  `--config.eval.fewshot.*` override it as any other (a multi-modality
  config: `eval.candidates` and `eval.bootstrap`)."""
  if "linear" not in config.eval:  # a multi-modality config
    for key in ("candidates", "bootstrap"):
      if key not in config.eval:
        config.eval[key] = 0
    return
  for key, value in (("suite", ""), ("fewshot", dict(fewshot.DEFAULTS))):
    if key not in config.eval:
      config.eval[key] = value


def _two_tower_probes(config, model, variables, tokenizer, mesh) -> dict:
  encoders = features.make_encoders(
      model, variables, mesh, parallel.compiler_options(config),
      augment.pixel_stats(config))
  suite_sets = _announce_suite(config)
  datasets = evaluated.evaluated_datasets(config, suite_sets)
  names = [name for name, _, _ in datasets]
  in_suite = [k for k in suite_sets if k in names]
  metrics = {}
  for name, split, fit_split in datasets:
    start = time.perf_counter()
    view = probe_inputs.DatasetView(config, name, split, fit_split, encoders,
                                    tokenizer, mesh)
    for probe in config.eval.probes:
      if probe in view.source.probes:
        metrics.update(registry.PROBES[probe].score(view))
    if name in in_suite and jax.process_index() == 0:
      done = in_suite.index(name) + 1
      print(f"  suite {suite.name(config)} {done}/{len(in_suite)}: {name} "
            f"({time.perf_counter() - start:.0f} s)", flush=True)
  return {**metrics, **suite.summary(config, metrics)}


def _announce_suite(config) -> list[str]:
  """Prints the suite's missing sets, a line each; returns those it can
  read (none without a suite)."""
  if not suite.name(config):
    return []
  fits = any(registry.PROBES[p].fits for p in config.eval.probes)
  present, missing = suite.availability(config, fits)
  if jax.process_index() == 0:
    print(f"suite {suite.name(config)}: {len(present)} of "
          f"{len(present) + len(missing)} sets to score"
          + ("; skipped:" if missing else ""), flush=True)
    for line in missing:
      print(f"  skipped {line}", flush=True)
  return present


def write_results(workdir: str, step: int, metrics: dict[str, float]) -> str:
  """Writes `metrics` into WORKDIR/eval/step_N.json (process 0 only),
  keeping the metrics of that step that other probes or datasets wrote
  before; returns its path."""
  path = epath.Path(workdir) / "eval" / f"step_{step}.json"
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = {}
    if path.exists():
      try:
        merged = json.loads(path.read_text())
      except ValueError:
        merged = {}  # a damaged file: rewritten whole
    merged.update(metrics)
    path.write_text(json.dumps(merged, indent=1, sort_keys=True))
  return str(path)


def format_table(step: int, metrics: dict[str, float]) -> str:
  width = max(map(len, metrics), default=0)
  rows = [f"  {k:<{width}}  {v:.4f}" for k, v in metrics.items()]
  return "\n".join([f"evaluation at step {step}:"] + rows)


def write_pictures(workdir: str, step: int, config: ml_collections.ConfigDict,
                   model, variables, tokenizer, mesh,
                   num_queries: int = 6, top_k: int = 5) -> list[str]:
  """WORKDIR/eval/gallery_step_N.png: for `num_queries` captions of the
  scored split (the first caption of evenly spaced images), the `top_k`
  retrieved images; and WORKDIR/eval/curves.png from metrics.jsonl.
  Returns the paths written (process 0 writes)."""
  name, split = config.data.name, config.eval.split
  source, _ = sources.get(name)
  if source.captions_key is None:
    raise config_io.UserError(f"--gallery needs a caption dataset; "
                              f"{name} has none")
  image_fn, text_fn = features.make_encoders(
      model, variables, mesh, parallel.compiler_options(config),
      augment.pixel_stats(config))
  test = features.extract_images(
      image_fn, name, split, config.data.data_dir, config.data.image_size,
      config.eval.batch_size, mesh, config.data.num_threads)
  examples = sources.open_split(name, split, config.data.data_dir)
  rows = np.linspace(0, len(test["index"]) - 1, num_queries).astype(int)
  queries = [text_lib.clean_caption(sources.decode_captions(
      source, examples[int(test["index"][r])])[0], config.data.max_words)
             for r in rows]
  query_emb = features.batched_apply(
      text_fn, text_lib.tokenize(tokenizer, queries), config.eval.batch_size,
      mesh)
  sim = (losses.l2_normalize(query_emb)
         @ losses.l2_normalize(test["embeddings"]).T)
  top = np.argsort(-np.asarray(sim), axis=1, kind="stable")[:, :top_k]

  def picture(row):
    image, _ = sources.decode(source, examples[int(test["index"][row])])
    return augment.center_crop_resize(image, max(config.data.image_size, 96))

  eval_dir = epath.Path(workdir) / "eval"
  paths = [str(eval_dir / f"gallery_step_{step}.png"),
           str(eval_dir / "curves.png")]
  if jax.process_index() == 0:
    eval_dir.mkdir(parents=True, exist_ok=True)
    plots.gallery_png(
        paths[0], queries, [[picture(r) for r in ranked] for ranked in top],
        [[r == own for r in ranked] for ranked, own in zip(top, rows)],
        f"{name} {split}: caption → top-{top_k} images, step {step}")
    metrics_path = epath.Path(workdir) / "metrics.jsonl"
    records = (plots.read_metrics(str(metrics_path))
               if metrics_path.exists() else [])
    plots.curves_png(paths[1], records, epath.Path(workdir).name)
  return paths


FLAGS = flags.FLAGS


def _define_flags():
  """Flags of the evaluate app (defined only when it runs as the program, so
  that importing this module next to main.py's flags does not clash)."""
  flags.DEFINE_string("workdir", None, "Training directory to evaluate.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_string("config", None,
                      "Config file overriding WORKDIR/config.json (optional).")
  flags.DEFINE_multi_string(
      "config_override", [], "KEY=VALUE; given as --config.KEY=VALUE, like "
      "training's overrides, for the fields evaluation reads: "
      f"{', '.join(OVERRIDABLE)}.")
  flags.DEFINE_bool("gallery", False,
                    "Also write eval/gallery_step_N.png (caption → top-5 "
                    "images) and eval/curves.png (from metrics.jsonl).")
  flags.mark_flag_as_required("workdir")


# The config fields `--config.KEY=VALUE` may change at evaluation; the model
# fields are the checkpoint's and are refused.
OVERRIDABLE = ("eval", "data.data_dir", "data.num_threads")
_FIXED = {"model": "the model fields are fixed by the checkpoint (retrain "
                   "to change them)"}


def parse_flags(argv: list[str]) -> list[str]:
  """absl parsing, with `--config.KEY=VALUE` taken as --config_override."""
  argv = [f"--config_override={a[len('--config.'):]}"
          if a.startswith("--config.") else a for a in argv]
  try:
    return FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"cliplite_jax.evaluate: error: {str(e).splitlines()[0]}")


def check_writable(workdir: str) -> None:
  """UserError unless WORKDIR/eval can be written (checked before the
  probes run, so their work is not lost at the end)."""
  eval_dir = epath.Path(workdir) / "eval"
  try:
    eval_dir.mkdir(parents=True, exist_ok=True)
    probe = eval_dir / f".writable_{os.getpid()}"
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise config_io.UserError(f"cannot write results to {eval_dir}: "
                              f"{e.strerror or e}") from e


def main(argv):
  cli.run("cliplite_jax.evaluate", argv, _evaluate,
          (sources.DatasetNotPreparedError,))


def _evaluate() -> None:
  """The command: checks, restores, scores, writes and prints."""
  workdir = FLAGS.workdir
  config = (config_io.load_file(FLAGS.config) if FLAGS.config
            else config_io.load_saved(config_io.existing_workdir(workdir)))
  _add_absent_eval_fields(config)
  # A config that imports a released model scores it as released while
  # WORKDIR has no checkpoint of its own (its model fields may then be
  # overridden: no checkpoint fixes them).
  scores_released = (bool(released.sources_of(config))
                     and not run_dir.has_checkpoint(workdir))
  config = config_io.apply_overrides(
      config, FLAGS.config_override,
      OVERRIDABLE + (("model",) if scores_released else ()),
      {} if scores_released else _FIXED)
  if FLAGS.config and released.sources_of(config):
    # The file names the release; the run's architecture is adopted from
    # it, as training did.
    for line in released.adopt(config):
      print(line)
  if not scores_released:
    config_io.existing_workdir(workdir)
  validation.check_eval(config)
  sources.canonical_datasets(config)
  evaluated.check_evaluation(config)
  evaluated.check_reads(evaluated.evaluation_reads(config),
                         config.data.data_dir)
  if multimodal.is_multimodal(config) and "zeroshot" in config.eval.probes:
    vectors.check_features(config, sources.open_split(
        config.data.name, config.eval.split, config.data.data_dir),
        config.eval.split)
  if jax.process_index() == 0:
    check_writable(workdir)
  if scores_released:
    print(f"{workdir} has no checkpoint: scoring the released weights "
          f"(step 0)")
    step, model, variables, tokenizer, mesh = run_dir.initial(config)
  else:
    step, model, variables, tokenizer, mesh = run_dir.restore(
        workdir, config, FLAGS.step)
  metrics = run_probes(config, model, variables, tokenizer, mesh)
  path = write_results(workdir, step, metrics)
  print(format_table(step, metrics))
  print(f"wrote {path}")
  if jax.process_index() == 0 and (
      table := suite.write_markdown(workdir, step, config, metrics)):
    print(f"wrote {table}")
  if FLAGS.gallery:
    for path in write_pictures(workdir, step, config, model, variables,
                               tokenizer, mesh):
      print(f"wrote {path}")


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=parse_flags)
