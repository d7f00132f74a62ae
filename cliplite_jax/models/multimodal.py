"""Models with M ≥ 2 modalities for Symile and its baselines.

Each modality has a tower chosen by config (an MLP for vector-valued
modalities here; the ResNet and BERT towers plug in the same way) and a
linear head to the shared width D; one learnable log-scale for the critic.
The two-tower `CLIPLite` model is untouched, so its checkpoints restore
unchanged.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from cliplite_jax.models import heads


class MLPTower(nn.Module):
  """float [B, d_in] → [B, widths[-1]]: Linear + ReLU per hidden width,
  the last layer linear (widths = (d,) is one affine map, as Symile's XOR
  encoders)."""
  widths: Sequence[int] = (16,)

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    del train
    x = x.astype(jnp.float32)
    for i, width in enumerate(self.widths):
      x = heads.torch_linear(width, x.shape[-1], name=f"dense{i}")(x)
      if i < len(self.widths) - 1:
        x = nn.relu(x)
    return x


class MultiModal(nn.Module):
  """One tower + linear head per modality, and the critic's log-scale.

  Attributes:
    modalities: names, in the order the loss sees them.
    towers: one module per modality ([B, ...] → [B, F_m]).
    embed_dim: D of every head.
    init_log_scale: initial log-scale (Symile's XOR: −0.3).
    missing: "zeros" (a missing modality's zeros go in as they are) or
      "indicator" (Symile's missingness indicator: each tower's input gets
      a learned embedding [2, d_m] of whether the modality is missing
      concatenated, from inputs["<m>_missing"], 0 where absent).
  """
  modalities: Sequence[str]
  towers: Sequence[nn.Module]
  embed_dim: int = 16
  init_log_scale: float = math.log(1 / 0.07)
  missing: str = "zeros"

  @nn.compact
  def __call__(self, inputs: dict, train: bool = False) -> dict:
    """{modality: [B, d_m], optionally "<m>_missing": [B] or [B, 1] (1:
    missing)} → {"embeddings": [M arrays float32 [B, D]], "log_scale": []}."""
    embeddings = []
    for name, tower in zip(self.modalities, self.towers):
      x = inputs[name].astype(jnp.float32)
      if self.missing == "indicator":
        flag = inputs.get(missing_key(name))
        flag = (jnp.zeros(x.shape[0], jnp.int32) if flag is None
                else flag.reshape(x.shape[0]).astype(jnp.int32))
        table = self.param(f"{name}_missing_embedding",
                           nn.initializers.normal(1.0), (2, x.shape[-1]))
        x = jnp.concatenate([x * (1 - flag)[:, None], table[flag]], axis=-1)
      features = tower(x, train=train)
      embeddings.append(heads.torch_linear(
          self.embed_dim, features.shape[-1], name=f"{name}_head")(features)
          .astype(jnp.float32))
    log_scale = self.param("log_scale",
                           nn.initializers.constant(self.init_log_scale), ())
    return {"embeddings": embeddings, "log_scale": log_scale}


TOWERS = {"mlp": MLPTower}


def is_multimodal(config: ml_collections.ConfigDict) -> bool:
  """Whether `config.model` describes a `MultiModal` model (it names its
  modalities) rather than the two-tower `CLIPLite`."""
  return "modalities" in config.model


def input_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The batch features the model reads: its modalities, and with
  `model.missing="indicator"` their `<m>_missing` flags (where the data
  has them)."""
  modalities = tuple(config.model.modalities)
  if config.model.get("missing", "zeros") != "indicator":
    return modalities
  return modalities + tuple(missing_key(m) for m in modalities)


def missing_key(modality: str) -> str:
  """The feature flagging `modality` as missing in an example (1: missing,
  its values then zeros), as data/symile_xor.py writes it."""
  return f"{modality}_missing"


def input_shapes(config: ml_collections.ConfigDict) -> dict[str, tuple]:
  """{modality: per-example input shape} from `model.towers.<m>.input_dim`."""
  return {m: (config.model.towers[m].input_dim,)
          for m in config.model.modalities}


def build(config: ml_collections.ConfigDict) -> MultiModal:
  """The model of `config.model`: modalities, towers.<m> (name "mlp",
  widths, input_dim), embed_dim, init_log_scale, missing."""
  m = config.model
  towers = []
  for name in m.modalities:
    tower = m.towers[name]
    towers.append(TOWERS[tower.name](widths=tuple(tower.widths)))
  return MultiModal(modalities=tuple(m.modalities), towers=tuple(towers),
                    embed_dim=m.embed_dim, init_log_scale=m.init_log_scale,
                    missing=m.get("missing", "zeros"))
