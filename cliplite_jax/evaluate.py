r"""Evaluates a checkpoint with the configured probes.

  python -m cliplite_jax.evaluate --workdir=WORKDIR [--step=N] [--config=FILE]

Restores the latest (or `--step`) checkpoint of WORKDIR onto the devices at
hand (any count), extracts embeddings with jitted, sharded, batched encoders,
runs the probes of `config.eval.probes`, writes WORKDIR/eval/step_N.json (a
flat JSON object of floats) and prints a table. The config is WORKDIR's
config.json unless --config names another file.
"""
from __future__ import annotations

import functools
import json
import math
import os
import sys

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from jax.sharding import Mesh

from cliplite_jax import checkpoint, config_io, optim, parallel, state as state_lib
from cliplite_jax.data import augment, pipeline, sources
from cliplite_jax.data import text as text_lib
from cliplite_jax.models import cliplite
from cliplite_jax.probes import linear, modality_gap, retrieval, zeroshot


def batched_apply(fn, inputs: tuple[np.ndarray, ...], batch_size: int,
                  mesh: Mesh) -> np.ndarray:
  """Applies jitted `fn(*batch) -> [b, D]` (or a tuple of such) over inputs
  with leading size N.

  Batches are sharded over `data`; the last one is padded with zeros and the
  padded rows are dropped (every encoder here is per-example in eval mode).
  Returns float32 [N, D] (or the tuple of them) on the host.
  """
  devices = mesh.devices.size
  batch_size = math.ceil(batch_size / devices) * devices
  n = len(inputs[0])
  sharding = parallel.batch_sharded(mesh)
  outputs = []
  for start in range(0, n, batch_size):
    chunk = [x[start:start + batch_size] for x in inputs]
    pad = batch_size - len(chunk[0])
    if pad:
      chunk = [np.concatenate([c, np.zeros((pad,) + c.shape[1:], c.dtype)])
               for c in chunk]
    # Every process holds the whole split and hands each of its devices that
    # device's rows, so this also works across hosts.
    out = fn(*(jax.make_array_from_callback(c.shape, sharding,
                                            lambda index, c=c: c[index])
               for c in chunk))
    outputs.append(jax.tree.map(lambda o: np.asarray(o)[:batch_size - pad],
                                out))
  return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)


def make_encoders(model: cliplite.CLIPLite, variables, mesh: Mesh):
  """Jitted image_fn(images uint8) → (pooled features [b, F], embeddings
  [b, D]) and text_fn(ids, mask) → embeddings [b, D]."""
  replicated = parallel.replicated(mesh)
  variables = jax.device_put(variables, replicated)

  # Replicated outputs can be read on every process (np.asarray).
  @functools.partial(jax.jit, out_shardings=replicated)
  def image_fn(images):
    return model.apply(variables, augment.normalize(images),
                       method=cliplite.CLIPLite.encode_image)

  @functools.partial(jax.jit, out_shardings=replicated)
  def text_fn(ids, mask):
    return model.apply(variables, ids, mask,
                       method=cliplite.CLIPLite.encode_text)[1]

  return image_fn, text_fn


def run_probes(config: ml_collections.ConfigDict, model, variables,
               tokenizer, mesh: Mesh) -> dict[str, float]:
  """Runs `config.eval.probes` on `config.eval.split`; flat {key: float}."""
  source, _ = sources.get(config.data.name)
  ds = config.data.name.partition("/")[0]
  arrays = pipeline.eval_arrays(config, tokenizer, config.eval.split)
  image_fn, text_fn = make_encoders(model, variables, mesh)
  bs = config.eval.batch_size
  img_features, img_emb = batched_apply(image_fn, (arrays["images"],), bs, mesh)
  metrics = {}
  if {"retrieval", "gap"} & set(config.eval.probes):
    txt_emb = batched_apply(
        text_fn, (arrays["input_ids"], arrays["attention_mask"]), bs, mesh)
  if "retrieval" in config.eval.probes:
    recalls = retrieval.recall_at_k(img_emb, txt_emb, arrays["caption_image"])
    metrics.update({f"retrieval/{ds}/{k}": v for k, v in recalls.items()})
  if "gap" in config.eval.probes:
    metrics[f"gap/{ds}/modality_gap"] = modality_gap.modality_gap(img_emb,
                                                                  txt_emb)
  if "linear" in config.eval.probes and source.linear_label:
    train = pipeline.eval_arrays(config, None, config.eval.linear.train_split)
    train_features, _ = batched_apply(image_fn, (train["images"],), bs, mesh)
    label = source.linear_label
    result = linear.train_and_score(
        train_features, train[label], img_features, arrays[label],
        num_classes=int(max(train[label].max(), arrays[label].max())) + 1,
        epochs=config.eval.linear.epochs,
        batch_size=config.eval.linear.batch_size,
        learning_rate=config.eval.linear.learning_rate)
    metrics[f"linear/{ds}/top1"] = result["top1"]
  if "zeroshot" in config.eval.probes:
    for i, (task, (label_key, classes, templates)) in enumerate(
        source.zeroshot.items()):
      templates = (templates,) if isinstance(templates, str) else templates
      prompts = [text_lib.clean_caption(t.format(c), config.data.max_words)
                 for c in classes for t in templates]
      prompt_emb = batched_apply(text_fn, text_lib.tokenize(tokenizer, prompts),
                                 bs, mesh)
      class_emb = zeroshot.class_embeddings(
          prompt_emb.reshape(len(classes), len(templates), -1))
      name = ds if i == 0 else f"{ds}_{task}"
      accuracy = zeroshot.accuracy(img_emb, class_emb, arrays[label_key],
                                   ks=(1, 5))
      metrics.update({f"zeroshot/{name}/{k}": v for k, v in accuracy.items()})
  return {k: float(v) for k, v in sorted(metrics.items())}


def write_results(workdir: str, step: int, metrics: dict[str, float]) -> str:
  """Writes WORKDIR/eval/step_N.json (process 0 only); returns its path."""
  path = os.path.join(workdir, "eval", f"step_{step}.json")
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      json.dump(metrics, f, indent=1, sort_keys=True)
  return path


def format_table(step: int, metrics: dict[str, float]) -> str:
  width = max(map(len, metrics), default=0)
  rows = [f"  {k:<{width}}  {v:.4f}" for k, v in metrics.items()]
  return "\n".join([f"evaluation at step {step}:"] + rows)


def evaluate_checkpoint(workdir: str, config: ml_collections.ConfigDict,
                        step: int | None = None) -> tuple[int, dict]:
  """Restores `step` (latest if None) from WORKDIR and runs the probes."""
  mesh = parallel.make_mesh()
  model = cliplite.build(config)
  tx = optim.build(config)
  mngr = checkpoint.manager(workdir, config, read_only=True)
  steps = mngr.all_steps()
  if not steps:
    raise config_io.UserError(
        f"no checkpoint in {os.path.join(workdir, 'checkpoints')}; train first: "
        f"python -m cliplite_jax.main --config=CONFIG --workdir={workdir}")
  step = steps[-1] if step is None else step
  if step not in steps:
    raise config_io.UserError(f"no checkpoint at step {step} in {workdir}; "
                              f"available steps: {list(steps)}")
  abstract = state_lib.abstract_state(config, model, tx, mesh)
  state = checkpoint.restore(mngr, step, abstract)
  tokenizer = pipeline.workdir_tokenizer(config, workdir, create=False)
  return step, run_probes(config, model, state.variables, tokenizer, mesh)


FLAGS = flags.FLAGS


def _define_flags():
  """Flags of the evaluate app (defined only when it runs as the program, so
  that importing this module next to main.py's flags does not clash)."""
  flags.DEFINE_string("workdir", None, "Training directory to evaluate.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_string("config", None,
                      "Config file overriding WORKDIR/config.json (optional).")
  flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR)  # Keep the table readable.
  try:
    workdir = config_io.existing_workdir(FLAGS.workdir)
    config = (config_io.load_file(FLAGS.config) if FLAGS.config
              else config_io.load_saved(workdir))
    step, metrics = evaluate_checkpoint(workdir, config, FLAGS.step)
  except (config_io.UserError, sources.DatasetNotPreparedError) as e:
    sys.exit(f"cliplite_jax.evaluate: error: {e}")
  path = write_results(workdir, step, metrics)
  print(format_table(step, metrics))
  print(f"wrote {path}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
