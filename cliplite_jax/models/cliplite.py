"""CLIP-Lite: two towers, a projection block per modality, priors, temperature."""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from cliplite_jax import objectives
from cliplite_jax.models import heads, towers
from cliplite_jax.objectives import noncontrastive
from cliplite_jax.training import parallel

# Parameter-tree names of the towers (the attribute names below).
IMAGE_TOWER = "image_encoder"
TEXT_TOWER = "text_encoder"


class CLIPLite(nn.Module):
  """Image and text towers with CLIP-Lite heads.

  Attributes:
    image_encoder, text_encoder: the towers (features of width d_img, d_txt).
    proj_dim: output width of both MILinearBlocks (2048 in the paper).
    init_log_scale: initial value of the unclamped log-temperature `t`
      (log(1/0.07) in the paper); the critic scale is exp(t).
    prior_img, prior_txt: build the Deep InfoMax prior discriminators.
    prior_widths: hidden widths of each discriminator ((1000, 200)).
    logit_bias: initial value of a learnable logit bias (SigLIP, -10), or None
      for no bias parameter.
    num_prototypes: K > 0 adds nCLIP's K learnable prototypes [K, proj_dim]
      (shared by both modalities); 0, no prototypes (the parameter tree of
      checkpoints written without them).
    head: a key of heads.HEADS: "milinear" (CLIP-Lite's MILinearBlock),
      "linear" (CLIP's bias-free projection) or "identity" (SigLIP: none).
    lock_image, lock_text: LiT's locked towers: run in inference mode
      (BatchNorm's running statistics, no dropout) and pass no gradient back
      (so XLA drops their backward pass); the optimiser leaves them alone.
    critic: a key of `heads.CRITICS` (`loss.critic`): "dot", the paper's
      critic on the heads' embeddings, or the reference code's "concat",
      "condot", "dotcon" (`heads.ConcatCritic` on the towers' features for
      the image–text term, the image–image and text–text terms, or both).
    image_image, text_text: CLIP-Lite's extra JSD terms (the reference's
      SELF_SUPERVISED flags): critics between two augmented views of each
      image, and between two captions of it.
  """
  image_encoder: nn.Module
  text_encoder: nn.Module
  proj_dim: int = 2048
  init_log_scale: float = math.log(1 / 0.07)
  prior_img: bool = True
  prior_txt: bool = True
  prior_widths: tuple[int, ...] = (1000, 200)
  logit_bias: float | None = None
  num_prototypes: int = 0
  head: str = "milinear"
  lock_image: bool = False
  lock_text: bool = False
  critic: str = "dot"
  image_image: bool = False
  text_text: bool = False
  dtype: Any = jnp.float32

  def setup(self):
    head = heads.HEADS[self.head]
    self.image_head = head(self.proj_dim, dtype=self.dtype)
    self.text_head = head(self.proj_dim, dtype=self.dtype)
    if self.prior_img:
      self.image_prior = heads.PriorDiscriminator(self.prior_widths)
    if self.prior_txt:
      self.text_prior = heads.PriorDiscriminator(self.prior_widths)
    self.log_scale = self.param(
        "log_scale", nn.initializers.constant(self.init_log_scale), ())
    if self.logit_bias is not None:
      self.bias = self.param(
          "logit_bias", nn.initializers.constant(self.logit_bias), ())
    cross, pairs = heads.CRITICS[self.critic]
    if cross == "concat":
      self.cross_critic = heads.ConcatCritic(heads.CONCAT_WIDTHS)
    for term in ("image_image", "text_text"):
      if getattr(self, term):
        setattr(self, f"{term}_critic", heads.ConcatCritic(
            heads.CONCAT_WIDTHS) if pairs == "concat" else heads.DotCritic(
                self.proj_dim, self.init_log_scale, self.dtype))
    if self.num_prototypes:
      # Rows of norm ~1: the cosines are scale-free, but the step size a
      # prototype's direction takes is 1/norm.
      self.prototypes = self.param(
          "prototypes", nn.initializers.normal(self.proj_dim ** -0.5),
          (self.num_prototypes, self.proj_dim))

  def encode_image(self, images: jnp.ndarray, train: bool = False):
    """images float [B, H, W, 3] → (features [B, d_img], embeddings [B, proj_dim]).

    Embeddings are projected but not normalised; both are float32.
    """
    features = self._image_features(images, train)
    return features, self.image_head(features, train=train)

  def _image_features(self, images, train: bool):
    features = self.image_encoder(images, train=train and not self.lock_image)
    return jax.lax.stop_gradient(features) if self.lock_image else features

  def encode_text(self, input_ids: jnp.ndarray, attention_mask: jnp.ndarray,
                  train: bool = False):
    """int32 [B, L] ids and mask → (features [B, d_txt], embeddings [B, proj_dim])."""
    features = self._text_features(input_ids, attention_mask, train)
    return features, self.text_head(features, train=train)

  def _text_features(self, input_ids, attention_mask, train: bool):
    features = self.text_encoder(input_ids, attention_mask,
                                 train=train and not self.lock_text)["features"]
    return jax.lax.stop_gradient(features) if self.lock_text else features

  def __call__(self, images, input_ids, attention_mask, train: bool = False,
               images_aug=None, input_ids_aug=None,
               attention_mask_aug=None) -> dict[str, jnp.ndarray]:
    """Forward pass for training.

    Returns a dict of float32 arrays: "img_emb", "txt_emb" [B, proj_dim],
    "log_scale" [], with prototypes "img_proto_logits" / "txt_proto_logits"
    [B, K] (cosines of the embeddings with nCLIP's prototypes), and, per
    enabled prior, "prior_img_real"/"prior_img_noise"
    (resp. txt) logits [B] of the discriminator on the raw tower features and
    on uniform noise U[0, 1) of the same shape (drawn from the "prior" rng).
    Each other critic P ("cross" for a concat image–text critic,
    "image_image" on the features of `images` and `images_aug` — a second
    augmented view — and "text_text" on those of the `*_aug` captions; at
    init, without them, the first view stands in) adds "P_a", "P_b": a
    concat critic's first layer's halves [B, w0] with "P_joint" [B] (the
    positive pairs' scores) and, under `parallel.REPLICATED`, "P_tail" (the
    rest's
    parameters, for the objective to score rolled pairs with
    `heads.CriticTail`); a dot critic's two embeddings [B, D] with
    "P_log_scale".
    """
    img_features, img_emb = self.encode_image(images, train)
    txt_features, txt_emb = self.encode_text(input_ids, attention_mask, train)
    out = {"img_emb": img_emb, "txt_emb": txt_emb, "log_scale": self.log_scale}
    if self.logit_bias is not None:
      out["logit_bias"] = self.bias
    pairs = []
    if heads.CRITICS[self.critic][0] == "concat":
      pairs.append(("cross", img_features, txt_features))
    if self.image_image:
      second = images if images_aug is None else images_aug
      # The tower alone: the heads (and their BatchNorm statistics) see
      # the first views only, as the reference's.
      pairs.append(("image_image", img_features,
                    self._image_features(second, train)))
    if self.text_text:
      second = ((input_ids, attention_mask) if input_ids_aug is None
                else (input_ids_aug, attention_mask_aug))
      pairs.append(("text_text", txt_features,
                    self._text_features(*second, train)))
    for name, x, y in pairs:
      critic = getattr(self, f"{name}_critic")
      if isinstance(critic, heads.ConcatCritic):
        out[f"{name}_a"], out[f"{name}_b"], out[f"{name}_joint"] = critic(x, y)
        out.setdefault(parallel.REPLICATED, {})[f"{name}_tail"] = (
            critic.variables["params"]["tail"])
      else:
        out[f"{name}_a"], out[f"{name}_b"], out[f"{name}_log_scale"] = critic(
            x, y, train)
    if self.num_prototypes:
      out["img_proto_logits"] = noncontrastive.prototype_logits(
          img_emb, self.prototypes)
      out["txt_proto_logits"] = noncontrastive.prototype_logits(
          txt_emb, self.prototypes)
    for name, enabled, features in (("img", self.prior_img, img_features),
                                    ("txt", self.prior_txt, txt_features)):
      if enabled:
        disc = self.image_prior if name == "img" else self.text_prior
        noise = jax.random.uniform(self.make_rng("prior"), features.shape)
        out[f"prior_{name}_real"] = disc(features)
        out[f"prior_{name}_noise"] = disc(noise)
    return out


def build(config: ml_collections.ConfigDict) -> CLIPLite:
  """The model described by `config.model` (and `config.loss` for priors/bias)."""
  m = config.model
  dtype = jnp.dtype(m.dtype)
  remat = m.get("remat", False)
  image = towers.build_image(m.image, dtype, remat)
  txt = towers.build_text(m.text, dtype, remat)
  objective = objectives.OBJECTIVES[config.loss.name]
  return CLIPLite(
      image_encoder=image, text_encoder=txt, proj_dim=m.proj_dim,
      init_log_scale=math.log(1.0 / m.init_temperature),
      prior_img=objective.priors and config.loss.prior_img,
      prior_txt=objective.priors and config.loss.prior_txt,
      prior_widths=tuple(m.prior_widths),
      logit_bias=(config.loss.init_logit_bias if objective.logit_bias
                  else None),
      num_prototypes=(config.loss.nclip.prototypes if objective.prototypes
                      else 0),
      head=heads.head_kind(m),
      lock_image=m.image.get("locked", False),
      lock_text=m.text.get("locked", False),
      critic=config.loss.get("critic", "dot"),
      image_image=bool(config.loss.get("image_image", 0.0)),
      text_text=bool(config.loss.get("text_text", 0.0)),
      dtype=dtype)
