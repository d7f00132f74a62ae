"""What a run tells its user: the start-up summary and the units people
compare runs by (examples seen, epochs, device-hours)."""
from __future__ import annotations

import jax
import ml_collections

from cliplite_jax import objectives
from cliplite_jax.data import mixture, pipeline
from cliplite_jax.models import cliplite, multimodal, towers
from cliplite_jax.training import optim

TOWERS = {cliplite.IMAGE_TOWER: "image", cliplite.TEXT_TOWER: "text"}


def parameter_counts(config: ml_collections.ConfigDict,
                     params) -> dict[str, dict[str, int]]:
  """{"image" | "text" | "heads" | "all": {"total", "trainable", "frozen"}}
  parameter counts of the model's `params` tree (arrays or shape structs);
  "heads" is everything outside the two towers (projections, priors,
  temperature); frozen: locked towers (LiT) and the text layers
  `model.text.train_last_layers` leaves out."""
  labels = optim.config_labels(config, params)
  counts = {name: {"total": 0, "trainable": 0, "frozen": 0}
            for name in ("image", "text", "heads", "all")}
  leaves = jax.tree_util.tree_leaves_with_path(params)
  for (path, leaf), label in zip(leaves, jax.tree.leaves(labels)):
    tower = TOWERS.get(str(getattr(path[0], "key", path[0])), "heads")
    kind = "frozen" if label == optim.FROZEN else "trainable"
    for name in (tower, "all"):
      counts[name]["total"] += int(leaf.size)
      counts[name][kind] += int(leaf.size)
  return counts


def epoch_examples(num_examples: int, config: ml_collections.ConfigDict
                   ) -> int:
  """Examples one epoch of the training stream holds: the (sub)set cut to
  whole global batches (per worker process), as `streams.EpochShuffle`."""
  chunk = pipeline.epoch_chunk(config)
  return num_examples // chunk * chunk


def _data_name(config: ml_collections.ConfigDict) -> str:
  """The training set, or how many sources a mixture has."""
  if mixture.is_mixture(config):
    return f"a mixture of {len(mixture.sources_of(config))} sources,"
  return config.data.name


def _count(n: int, noun: str) -> str:
  return f"{n} {noun}" + ("" if n == 1 else "s")


def _millions(n: int) -> str:
  return f"{n / 1e6:.2f}M" if n >= 10_000 else f"{n}"


def _model_line(config: ml_collections.ConfigDict, counts: dict) -> str:
  total = (f"{_millions(counts['all']['total'])} parameters, "
           f"{_millions(counts['all']['trainable'])} trained")
  if multimodal.is_multimodal(config):
    texts = multimodal.text_modalities(config)

    def described(m):
      fields = config.model.towers[m]
      if m in texts:
        return (f"{m}: text, {towers.text_tower(fields).describe(fields)}"
                f"→{config.model.embed_dim}")
      return f"{m}: {fields.name} {fields.input_dim}→{config.model.embed_dim}"
    listed = ", ".join(described(m) for m in config.model.modalities)
    missing = (", each with a missingness indicator (a learned embedding "
               "beside its values" + (", [MISSING] for text" if texts else "")
               + ")"
               if config.model.get("missing", "zeros") == "indicator" else "")
    return (f"model: {len(config.model.modalities)} modalities ({listed})"
            f"{missing}; {total}")
  image, text = config.model.image, config.model.text

  def tower(name, fields, row):
    c = counts[name]
    if fields.get("locked", False):
      state = ", locked"
    elif c["frozen"]:
      state = f", {_millions(c['frozen'])} frozen"
    else:
      state = ""
    return f"{row.describe(fields)} {_millions(c['total'])}{state}"

  return (f"model: image {tower('image', image, towers.image_tower(image))}, "
          f"text {tower('text', text, towers.text_tower(text))}, heads "
          f"{_millions(counts['heads']['total'])}; {total}")


def startup_lines(config: ml_collections.ConfigDict, params, mesh,
                  workdir: str, resumed_step: int | None,
                  num_examples: int) -> list[str]:
  """The start-up summary: objective, towers and parameter counts, dtype,
  devices and mesh, rows per device and micro-batch, steps and epochs of
  `num_examples` (the training (sub)set), warmup and learning rates, the
  data, the workdir and resume point."""
  counts = parameter_counts(config, params)
  devices = mesh.devices.size
  per_device = config.batch_size // devices
  accum = config.get("accum_steps", 1)
  epoch = epoch_examples(num_examples, config)
  loss = config.loss.name + (f" + priors (weight {config.loss.prior_weight})"
                             if objectives.OBJECTIVES[config.loss.name].priors
                             else "")
  if objectives.by_ring(config.loss):
    loss += " by ring (nothing gathered)"

  lr = ", ".join(f"{g} {v:g}" for g, v in config.optim.lr.items())
  lookahead = (f", Lookahead k {config.optim.lookahead_k}"
               if config.optim.lookahead_k > 0 else "")
  if optim.ema_decay(config):
    lookahead += (f", weight EMA {optim.ema_decay(config):g} (evaluated "
                  f"and exported)")
  start = (f"resuming at step {resumed_step}" if resumed_step is not None
           else "a new run")
  return [
      f"objective {loss}; compute {config.model.get('dtype', 'float32')}",
      _model_line(config, counts),
      f"devices: {devices} {jax.devices()[0].platform} on "
      f"{jax.process_count()} host(s), mesh "
      + " × ".join(f"{a} {n}" for a, n in mesh.shape.items()),
      f"batch: {config.batch_size} global, {per_device} per device, "
      f"{per_device // accum} per micro-batch",
      f"data: {_data_name(config)} {config.data.train_split}, "
      f"{num_examples} examples (fraction {config.data.fraction:g}); "
      f"{_count(config.total_steps, 'step')} = "
      f"{config.total_steps * config.batch_size / max(epoch, 1):.1f} epochs",
      f"optimiser: {config.optim.name}, lr {lr}, warmup "
      f"{_count(config.optim.warmup_steps, 'step')}, cosine to 0{lookahead}",
      f"workdir: {workdir} ({start})",
  ]
