"""Models with M ≥ 2 modalities for Symile and its baselines.

Each modality has a tower chosen by config (an MLP for vector-valued
modalities, e.g. features precomputed by frozen encoders; a text tower of
`towers.TEXT_TOWERS` for a text modality, fed token ids and their mask) and
a linear head to the shared width D; one learnable log-scale for the critic.
The two-tower `CLIPLite` model is untouched, so its checkpoints restore
unchanged.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from cliplite_jax.models import heads, towers as towers_lib


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
      "indicator" (Symile's missingness indicator: each vector tower's input
      gets a learned embedding [2, d_m] of whether the modality is missing
      concatenated, from inputs["<m>_missing"], 0 where absent; a missing
      text is Symile's [MISSING] token, put in by the input pipeline).
    texts: the modalities whose tower is a text tower.
  """
  modalities: Sequence[str]
  towers: Sequence[nn.Module]
  embed_dim: int = 16
  init_log_scale: float = math.log(1 / 0.07)
  missing: str = "zeros"
  texts: Sequence[str] = ()

  @nn.compact
  def __call__(self, inputs: dict, train: bool = False) -> dict:
    """{modality: float [B, d_m] (vectors) or int32 token ids [B, L]
    (texts, with "<m>_attention_mask" int32 [B, L]), optionally
    "<m>_missing": [B] or [B, 1] (1: missing)} → {"embeddings": [M arrays
    float32 [B, D]], "log_scale": []}."""
    embeddings = []
    for name, tower in zip(self.modalities, self.towers):
      if name in self.texts:
        features = tower(inputs[name], inputs[attention_mask_key(name)],
                         train=train)["features"]
      else:
        x = inputs[name].astype(jnp.float32)
        if self.missing == "indicator":
          flag = inputs.get(missing_key(name))
          flag = (jnp.zeros(x.shape[0], jnp.int32) if flag is None
                  else flag.reshape(x.shape[0]).astype(jnp.int32))
          table = self.param(f"{name}_missing_embedding",
                             nn.initializers.normal(1.0), (2, x.shape[-1]))
          x = jnp.concatenate([x * (1 - flag)[:, None], table[flag]],
                              axis=-1)
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


def text_modalities(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The modalities whose tower is a text tower (fed token ids)."""
  return tuple(m for m in config.model.modalities
               if config.model.towers[m].name != "mlp")


def has_text(config: ml_collections.ConfigDict) -> bool:
  """Whether a run reads text, so has a tokenizer (WORKDIR/tokenizer.json):
  every two-tower run, and a multi-modality run with a text modality."""
  return not is_multimodal(config) or bool(text_modalities(config))


def text_fields(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The text tower's section: `model.text`, or a multi-modality model's
  (one) text modality's `model.towers.<m>`."""
  if not is_multimodal(config):
    return config.model.text
  return config.model.towers[text_modalities(config)[0]]


def input_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The batch features the model reads: its modalities, a text modality's
  `<m>_attention_mask`, and with `model.missing="indicator"` the
  `<m>_missing` flags (where the data has them)."""
  modalities = tuple(config.model.modalities)
  keys = modalities + tuple(attention_mask_key(m)
                            for m in text_modalities(config))
  if config.model.get("missing", "zeros") != "indicator":
    return keys
  return keys + tuple(missing_key(m) for m in modalities)


def attention_mask_key(modality: str) -> str:
  """The feature holding a text modality's attention mask."""
  return f"{modality}_attention_mask"


def missing_key(modality: str) -> str:
  """The feature flagging `modality` as missing in an example (1: missing,
  its values then zeros), as data/symile_xor.py writes it."""
  return f"{modality}_missing"


def dummy_inputs(config: ml_collections.ConfigDict,
                 batch: int = 2) -> dict[str, jnp.ndarray]:
  """Inputs for `init`: {m: float32 [b, input_dim]} per vector modality,
  int32 ids and mask [b, data.max_tokens] per text modality."""
  texts = text_modalities(config)
  inputs = {m: jnp.zeros((batch, config.model.towers[m].input_dim),
                         jnp.float32)
            for m in config.model.modalities if m not in texts}
  for m in texts:
    inputs[m] = jnp.zeros((batch, config.data.max_tokens), jnp.int32)
    inputs[attention_mask_key(m)] = jnp.ones_like(inputs[m])
  return inputs


def build(config: ml_collections.ConfigDict) -> MultiModal:
  """The model of `config.model`: modalities, towers.<m> (name "mlp" with
  widths and input_dim, or a `towers.TEXT_TOWERS` name with its fields),
  embed_dim, init_log_scale, missing."""
  m = config.model
  towers = []
  for name in m.modalities:
    tower = m.towers[name]
    towers.append(TOWERS[tower.name](widths=tuple(tower.widths))
                  if tower.name in TOWERS else
                  towers_lib.build_text(tower, jnp.float32, remat=False))
  return MultiModal(modalities=tuple(m.modalities), towers=tuple(towers),
                    embed_dim=m.embed_dim, init_log_scale=m.init_log_scale,
                    missing=m.get("missing", "zeros"),
                    texts=text_modalities(config))


def _text_towers(c) -> list[str]:
  """The modalities a config gives a text tower (validation's checker)."""
  sections = c.get("model.towers") or {}
  return [m for m in c.get("model.modalities") or ()
          if m in sections
          and c.get(f"model.towers.{m}.name") in towers_lib.TEXT_TOWERS]


def check_fields(c) -> None:
  """Validation of a multi-modality config's model fields (validation's
  checker `c` collects a line per problem)."""
  modalities = c.get("model.modalities")
  c.require(isinstance(modalities, (tuple, list)) and len(modalities) >= 2
            and len(set(modalities)) == len(modalities), "model.modalities",
            "a tuple of ≥ 2 distinct modality (feature) names")
  sections = c.get("model.towers") or {}
  for m in modalities or ():
    if m not in sections:
      c.problems.append(f"model.towers has no entry for modality {m!r}")
      continue
    key = f"model.towers.{m}"
    c.one_of(f"{key}.name", tuple(TOWERS) + tuple(towers_lib.TEXT_TOWERS))
    if c.get(f"{key}.name") in towers_lib.TEXT_TOWERS:
      towers_lib.check(c, key, towers_lib.TEXT_TOWERS,
                       towers_lib.DEFAULT_TEXT)
      c.require(c.get(f"{key}.train_last_layers", -1) == -1,
                f"{key}.train_last_layers",
                "-1 (a multi-modality model trains its text tower whole)")
      continue
    c.integer(f"{key}.input_dim", 1)
    widths = c.get(f"{key}.widths")
    c.require(isinstance(widths, (tuple, list)) and all(
        isinstance(w, int) and not isinstance(w, bool) and w >= 1
        for w in widths), f"{key}.widths",
              "a tuple of hidden widths ≥ 1 (() for one affine map)")
  texts = _text_towers(c)
  c.require(len(texts) <= 1, "model.towers",
            f"at most one text modality (one tokenizer per run); "
            f"{', '.join(texts)} have text towers")
  if texts:
    c.integer("data.max_tokens", 3, "an integer ≥ 3 ([CLS], a word, [SEP])")
    c.require(isinstance(c.get("data.tokenizer"), str), "data.tokenizer",
              '"wordpiece", "bpe" or a local tokenizer path')
  c.integer("model.embed_dim", 1)
  c.one_of("model.missing", ("zeros", "indicator"))
  scale = c.get("model.init_log_scale")
  c.require(isinstance(scale, (int, float)) and not isinstance(scale, bool)
            and math.isfinite(scale), "model.init_log_scale",
            "a finite number (the critic's initial log-scale)")
  c.one_of("loss.symile_sampling", ("n", "n_squared"))


def check_relations(c) -> None:
  """Validation of the relations within a text modality's tower (heads
  dividing the width, max_len ≥ data.max_tokens), once every field is in
  its domain."""
  for m in _text_towers(c):
    towers_lib.check_relations(c, f"model.towers.{m}",
                               towers_lib.TEXT_TOWERS, towers_lib.DEFAULT_TEXT)
