"""The optax optimiser of CLIP-Lite.

clip_by_global_norm → per-group [add_decayed_weights → SGD momentum, LR
schedule] → Lookahead. Order and semantics match PyTorch's
`clip_grad_norm_` + `SGD(momentum, weight_decay)` (decay added to the gradient
before momentum) wrapped in Lookahead(k, alpha). Groups are picked by regex
over the '/'-joined parameter path; the first match wins and unmatched
parameters fall into "other". Frozen parameters — a locked tower's
(`model.image.locked`, `model.text.locked`: LiT) and the text layers
`model.text.train_last_layers` leaves out — get neither gradient (they are
left out of the clipping norm too) nor update nor weight decay nor optimiser
state.
"""
from __future__ import annotations

import re

import jax
import ml_collections
import optax

from cliplite_jax.models import cliplite

OTHER = "other"
FROZEN = "frozen"
_TEXT_LAYER = re.compile(r"^text_encoder/layer_(\d+)/")
# What a text tower has after its blocks (BERT; CLIP and SigLIP).
_TEXT_AFTER_LAYERS = tuple(f"text_encoder/{name}/" for name in (
    "pooler", "final_layer_norm", "head"))


def is_frozen(key: str, layers: int, train_last_layers: int,
              locked: tuple[str, ...] = ()) -> bool:
  """Whether the parameter at '/'-joined path `key` is frozen.

  Everything under a `locked` top-level name (a tower's) is. Of the text
  tower, train_last_layers < 0 trains everything; 0 freezes it whole;
  N > 0 trains only its last N `layer_i` blocks and what follows them
  (BERT's pooler; CLIP's final LayerNorm and head).
  """
  if key.split("/", 1)[0] in locked:
    return True
  if train_last_layers < 0 or not key.startswith("text_encoder/"):
    return False
  layer = _TEXT_LAYER.match(key)
  if layer:
    return int(layer.group(1)) < layers - train_last_layers
  if key.startswith(_TEXT_AFTER_LAYERS):
    return train_last_layers == 0
  return True  # embeddings


def param_labels(params, group_regex: dict[str, str], text_layers: int = 0,
                 train_last_layers: int = -1, locked: tuple[str, ...] = ()):
  """A tree like `params` whose leaves are group names (or FROZEN)."""
  patterns = [(name, re.compile(rx)) for name, rx in group_regex.items()]

  def label(path, _):
    key = "/".join(str(getattr(p, "key", p)) for p in path)
    if is_frozen(key, text_layers, train_last_layers, locked):
      return FROZEN
    return next((name for name, rx in patterns if rx.search(key)), OTHER)

  return jax.tree_util.tree_map_with_path(label, params)


def locked_towers(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The parameter-tree names of the towers `config` locks (LiT)."""
  return tuple(name for section, name in (("image", cliplite.IMAGE_TOWER),
                                          ("text", cliplite.TEXT_TOWER))
               if (config.model.get(section) or {}).get("locked", False))


def has_frozen(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` freezes any parameter (else the optimiser state is as
  it was before freezing existed)."""
  text = config.model.get("text") or {}
  return bool(locked_towers(config)) or text.get("train_last_layers", -1) >= 0


def config_labels(config: ml_collections.ConfigDict, params):
  """`param_labels` of `params` for `config`: its groups, locked towers and
  the frozen text-tower layers (`model.text.train_last_layers`; a model
  without a text tower, or a config saved before freezing existed, trains
  all)."""
  text = config.model.get("text") or {}
  return param_labels(params, dict(config.optim.group_regex),
                      text.get("layers", 0), text.get("train_last_layers", -1),
                      locked_towers(config))


def clipped_norm(config: ml_collections.ConfigDict, grads) -> jax.Array:
  """The global L2 norm that `clip_by_global_norm` sees: float32 scalar over
  the gradient tree `grads` (shaped like the model params), frozen
  parameters left out."""
  labels = config_labels(config, grads)
  trainable = [g for g, label in zip(jax.tree.leaves(grads),
                                     jax.tree.leaves(labels))
               if label != FROZEN]
  return optax.global_norm(trainable)


def schedules(config: ml_collections.ConfigDict) -> dict[str, optax.Schedule]:
  """Per group: linear warmup 0 → peak over `warmup_steps`, then cosine to 0."""
  o = config.optim
  return {
      group: optax.warmup_cosine_decay_schedule(
          init_value=0.0, peak_value=peak, warmup_steps=o.warmup_steps,
          decay_steps=config.total_steps, end_value=0.0)
      for group, peak in o.lr.items()
  }


def _group_optimizer(o, schedule) -> optax.GradientTransformation:
  if o.name == "sgd":
    return optax.chain(optax.add_decayed_weights(o.weight_decay),
                       optax.sgd(schedule, momentum=o.momentum))
  if o.name == "adamw":
    return optax.adamw(schedule, b1=o.b1, b2=o.b2,
                       weight_decay=o.weight_decay)
  raise ValueError(f"optim.name must be 'sgd' or 'adamw', got {o.name!r}")


def build(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The full gradient transformation for `config.optim`.

  With `optim.lookahead_k > 0` it expects `optax.LookaheadParams` as params
  (see `init_params`).
  """
  o = config.optim
  per_group = {g: _group_optimizer(o, s) for g, s in schedules(config).items()}
  if OTHER not in per_group:
    raise ValueError(f"optim.lr needs an {OTHER!r} entry, got {list(o.lr)}")

  def labels(params):
    return config_labels(config, params)

  stages = [optax.clip_by_global_norm(o.clip_norm)]
  if has_frozen(config):
    per_group[FROZEN] = optax.set_to_zero()
    stages.insert(0, optax.masked(
        optax.set_to_zero(),
        lambda p: jax.tree.map(lambda g: g == FROZEN, labels(p))))
  tx = optax.chain(*stages, optax.multi_transform(per_group, labels))
  if o.lookahead_k > 0:
    tx = optax.lookahead(tx, sync_period=o.lookahead_k,
                         slow_step_size=o.lookahead_alpha)
  return tx


def ema_decay(config: ml_collections.ConfigDict) -> float:
  """`optim.ema_decay`: the weight EMA's decay, 0 (off; also for configs
  saved before it existed) or in (0, 1)."""
  return float(config.optim.get("ema_decay", 0.0))


def ema_update(ema, variables, decay: float):
  """One EMA step: decay · ema + (1 − decay) · variables, leaf by leaf
  (float32 trees of one structure: {"params", "batch_stats"})."""
  return optax.incremental_update(variables, ema, step_size=1.0 - decay)


def init_params(config: ml_collections.ConfigDict, params):
  """Wraps fresh model params as the optimiser expects (Lookahead: fast = slow)."""
  if config.optim.lookahead_k > 0:
    return optax.LookaheadParams.init_synced(params)
  return params


def model_params(params):
  """The weights the model runs with: Lookahead's fast weights, else `params`."""
  return params.fast if isinstance(params, optax.LookaheadParams) else params
