"""Frozen features and embeddings of whole splits, jitted and sharded.

Images stream through `eval_input.batches` (each process its share) and are
encoded batch by batch; captions and prompts are few enough that every
process holds them all (`batched_apply`). Either way every process ends with
the same full arrays, in split order.
"""
from __future__ import annotations

import functools
import math
import sys

import jax
import numpy as np
from jax.sharding import Mesh

from cliplite_jax import config_io

from cliplite_jax.data import augment
from cliplite_jax.models import cliplite
from cliplite_jax.progress import Progress
from cliplite_jax.training import parallel


def make_encoders(model: cliplite.CLIPLite, variables, mesh: Mesh,
                  compiler_options: dict[str, str | int] | None = None,
                  pixel_stats: tuple = (augment.IMAGENET_MEAN,
                                        augment.IMAGENET_STD)):
  """Jitted encoders with replicated outputs (readable on every process).

  image_fn(batch) takes an `eval_input` batch and returns it with "images"
  replaced by "features" (pooled, float32 [b, F]) and "embeddings" (projected,
  [b, D]); text_fn(ids, mask) returns caption embeddings [b, D].
  `compiler_options` are XLA options for both (`parallel.compiler_options`);
  `pixel_stats` the model's (mean, std) (`augment.pixel_stats`).
  """
  replicated = parallel.replicated(mesh)
  variables = jax.device_put(variables, replicated)

  @functools.partial(jax.jit, out_shardings=replicated,
                     compiler_options=compiler_options)
  def image_fn(batch):
    batch = dict(batch)
    features, embeddings = model.apply(
        variables, augment.normalize(batch.pop("images"), pixel_stats),
        method=cliplite.CLIPLite.encode_image)
    return dict(batch, features=features, embeddings=embeddings)

  @functools.partial(jax.jit, out_shardings=replicated,
                     compiler_options=compiler_options)
  def text_fn(ids, mask):
    return model.apply(variables, ids, mask,
                       method=cliplite.CLIPLite.encode_text)[1]

  return image_fn, text_fn


def global_batch_size(batch_size: int, mesh: Mesh) -> int:
  """`batch_size` rounded up to a multiple of the device count."""
  devices = mesh.devices.size
  return math.ceil(batch_size / devices) * devices


def batched_apply(fn, inputs: tuple[np.ndarray, ...], batch_size: int,
                  mesh: Mesh):
  """Applies jitted `fn(*batch) -> [b, D]` (or a pytree of such) over inputs
  of leading size N that every process holds whole.

  Batches are sharded over `data`; the last one is padded with zeros and the
  padded rows dropped (every encoder here is per-example in eval mode).
  Returns float32 [N, D] (or the pytree of them) on the host.
  """
  batch_size = global_batch_size(batch_size, mesh)
  n = len(inputs[0])
  sharding = parallel.batch_sharded(mesh)
  outputs = []
  for start in range(0, n, batch_size):
    chunk = [x[start:start + batch_size] for x in inputs]
    pad = batch_size - len(chunk[0])
    if pad:
      chunk = [np.concatenate([c, np.zeros((pad,) + c.shape[1:], c.dtype)])
               for c in chunk]
    # Every process holds the whole input and hands each of its devices
    # that device's rows, so this also works across hosts.
    out = fn(*(jax.make_array_from_callback(c.shape, sharding,
                                            lambda index, c=c: c[index])
               for c in chunk))
    outputs.append(jax.tree.map(lambda o: np.asarray(o)[:batch_size - pad],
                                out))
  return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)


def extract_images(image_fn, name: str, split: str, data_dir: str | None,
                   image_size: int, batch_size: int, mesh: Mesh,
                   num_threads: int = 2) -> dict[str, np.ndarray]:
  """Encodes every usable image of a split.

  Returns, in split order over the N usable examples: "features" float32
  [N, F], "embeddings" float32 [N, D], "index" int32 [N] (position in the
  split) and the source's labels. Unusable examples are left out and counted
  on stderr; none usable is a UserError.
  """
  # Here, not at the top: the encoders alone (a model in use) need neither
  # grain nor TFDS.
  from cliplite_jax.data import eval_input, sources
  source, _ = sources.get(name)
  examples = sources.open_split(name, split, data_dir)
  global_batch = global_batch_size(batch_size, mesh)
  local_batch = global_batch // jax.process_count()
  sharding = parallel.batch_sharded(mesh)
  # A line every half minute on long extractions, none at the end: the
  # evaluation table follows.
  progress = Progress(f"{name} {split}", len(examples), unit="images",
                      every_s=30.0, show=jax.process_index() == 0,
                      last_line=False, redraw=False)
  parts = []
  for local in eval_input.batches(source, examples, image_size, local_batch,
                                  jax.process_index(), jax.process_count(),
                                  num_threads):
    batch = {k: jax.make_array_from_process_local_data(sharding, v)
             for k, v in local.items()}
    out = jax.tree.map(np.asarray, image_fn(batch))
    parts.append(out)
    progress.add(int(np.sum(out["index"] >= 0)))
  out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  usable = out.pop("valid") & (out["index"] >= 0)
  skipped = int(np.sum(out["index"] >= 0)) - int(np.sum(usable))
  if skipped:
    print(f"{name} {split}: skipped {skipped} unusable examples of "
          f"{len(examples)}", file=sys.stderr)
  if not usable.any():
    raise config_io.UserError(f"{name} {split}: no usable examples")
  order = np.argsort(out["index"][usable], kind="stable")
  return {k: np.asarray(v[usable][order], np.float32
                        if k in ("features", "embeddings") else v.dtype)
          for k, v in out.items()}
