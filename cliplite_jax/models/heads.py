"""Projection heads (CLIP-Lite's block, a released model's) and the prior
discriminator.

Linear layers use PyTorch's default `nn.Linear` init (weights and bias
uniform(±1/sqrt(fan_in))), as the reference implementation does.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def torch_linear(features: int, fan_in: int, use_bias: bool = True,
                 kernel_init=None, **kwargs) -> nn.Dense:
  """nn.Dense initialised like torch.nn.Linear(fan_in, features).

  `kernel_init` replaces the weight init only; the bias keeps torch's.
  """
  bound = 1.0 / fan_in**0.5
  uniform = lambda key, shape, dtype=jnp.float32: jax.random.uniform(
      key, shape, dtype, -bound, bound)
  return nn.Dense(features, use_bias=use_bias,
                  kernel_init=kernel_init or uniform, bias_init=uniform,
                  **kwargs)


def noisy_identity_init(key, shape, dtype=jnp.float32):
  """uniform(-0.01, 0.01) everywhere, then 1.0 on (i, i) for i < min(d_in, d_out).

  `shape` is flax's kernel layout [d_in, d_out].
  """
  kernel = jax.random.uniform(key, shape, dtype, -0.01, 0.01)
  diagonal = jnp.arange(min(shape))
  return kernel.at[diagonal, diagonal].set(1.0)


class MILinearBlock(nn.Module):
  """`LayerNorm(Linear(ReLU(BatchNorm(Linear_nobias(f)))) + Shortcut(f))`.

  The shortcut is a Linear(d → out_dim) with the noisy-identity init.
  """
  out_dim: int = 2048
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: jnp.ndarray, train: bool) -> jnp.ndarray:
    """features: [B, d] → float32 [B, out_dim] (not normalised)."""
    d = features.shape[-1]
    x = features.astype(self.dtype)
    h = torch_linear(self.out_dim, d, use_bias=False, dtype=self.dtype,
                     name="linear1")(x)
    h = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     dtype=self.dtype, name="norm")(h)
    h = torch_linear(self.out_dim, self.out_dim, dtype=self.dtype,
                     name="linear2")(nn.relu(h))
    shortcut = torch_linear(self.out_dim, d, kernel_init=noisy_identity_init,
                            dtype=self.dtype, name="shortcut")(x)
    out = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="out_norm")(
        h + shortcut)
    return out.astype(jnp.float32)


class PriorDiscriminator(nn.Module):
  """Deep InfoMax prior discriminator: MLP (1000, 200, 1), ReLU.

  Returns the logit; D = sigmoid(logit) is never formed, so losses can use
  log-sigmoid directly.
  """
  widths: Sequence[int] = (1000, 200)

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """x: float [B, d] → logits float32 [B]."""
    x = x.astype(jnp.float32)
    for i, width in enumerate(self.widths):
      x = nn.relu(torch_linear(width, x.shape[-1], name=f"dense{i}")(x))
    return torch_linear(1, x.shape[-1], name="logit")(x)[:, 0]


class ConcatCritic(nn.Module):
  """CLIP-Lite's "concat" critic (the reference's `GlobalDiscriminator`):
  T(x, y) = MLP([f_x; f_y]) on the towers' raw features, Linear(d_x + d_y →
  512) → ReLU → Linear(512 → 512) → ReLU → Linear(512 → 1), torch's init;
  no normalisation, no temperature.

  The first layer is kept as its two halves, W_x f_x + b and W_y f_y (their
  sum is the layer on the concatenation), so that a negative pair (x_i,
  y_j) costs the rest of the MLP only (`CriticTail`), which the objective
  applies to rolled rows on each device.
  """
  widths: Sequence[int] = (512, 512)

  @nn.compact
  def __call__(self, x: jnp.ndarray, y: jnp.ndarray):
    """x: [B, d_x], y: [B, d_y] → (first-layer halves float32 [B, w0]
    each, the positive pairs' scores T(x_i, y_i) float32 [B])."""
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    fan_in = x.shape[-1] + y.shape[-1]
    half_x = torch_linear(self.widths[0], fan_in, name="image_in")(x)
    half_y = torch_linear(self.widths[0], fan_in, use_bias=False,
                          name="text_in")(y)
    scores = CriticTail(self.widths, name="tail")(half_x + half_y)
    return half_x, half_y, scores


class CriticTail(nn.Module):
  """The concat critic after its first layer: pre-activations [B, w0] →
  ReLU → Linear per further width → ReLU → Linear(1): scores float32 [B]."""
  widths: Sequence[int] = (512, 512)

  @nn.compact
  def __call__(self, h: jnp.ndarray) -> jnp.ndarray:
    for i, width in enumerate(self.widths[1:]):
      h = torch_linear(width, h.shape[-1], name=f"dense{i}")(nn.relu(h))
    return torch_linear(1, h.shape[-1], name="logit")(nn.relu(h))[:, 0]


class DotCritic(nn.Module):
  """CLIP-Lite's dot-product critic for a pair of views of one modality
  (the reference's `GlobalDiscriminatorDot` for its image–image and
  text–text terms): a MILinearBlock per side, each with its own weights,
  and its own learnable log-scale t; T = <a/|a|, b/|b|> exp(t)."""
  out_dim: int = 2048
  init_log_scale: float = 2.6592600369327779  # log(1/0.07)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, y: jnp.ndarray, train: bool):
    """x: [B, d], y: [B, d] → (float32 [B, out_dim] each, t [])."""
    a = MILinearBlock(self.out_dim, self.dtype, name="block_a")(x, train)
    b = MILinearBlock(self.out_dim, self.dtype, name="block_b")(y, train)
    log_scale = self.param("log_scale",
                           nn.initializers.constant(self.init_log_scale), ())
    return a, b, log_scale


# `loss.critic` → (the critic of the image–text term, that of the
# image–image and text–text terms), as the reference's MODEL.LOSS.TYPE:
# "dot" is the paper's <x/|x|, y/|y|> exp(t) on MILinearBlock outputs,
# "concat" its MLP on concatenated features (`ConcatCritic`).
CRITICS = {"dot": ("dot", "dot"), "concat": ("concat", "concat"),
           "condot": ("concat", "dot"), "dotcon": ("dot", "concat")}
CONCAT_WIDTHS = (512, 512)


class LinearProjection(nn.Module):
  """CLIP's projection: one bias-free Linear (`visual_projection`,
  `text_projection`), initialised as torch's; loaded from a released model
  (`models/released`)."""
  out_dim: int = 512
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: jnp.ndarray, train: bool) -> jnp.ndarray:
    """features: [B, d] → float32 [B, out_dim] (not normalised)."""
    del train
    return torch_linear(self.out_dim, features.shape[-1], use_bias=False,
                        dtype=self.dtype)(
                            features.astype(self.dtype)).astype(jnp.float32)


class Identity(nn.Module):
  """No head: the tower's features are the embedding (SigLIP's towers end
  in their own projection). `out_dim` is unused (the features' width)."""
  out_dim: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: jnp.ndarray, train: bool) -> jnp.ndarray:
    """features: [B, d] → float32 [B, d]."""
    del train
    return features.astype(jnp.float32)


# `model.head` → the module both modalities get: CLIP-Lite's block (the
# paper's), CLIP's bias-free projection, or none (SigLIP).
HEADS = {"milinear": MILinearBlock, "linear": LinearProjection,
         "identity": Identity}
# `model.head="released"`: a released model's own heads (loaded from
# `model.init_from`), by its text tower's family.
RELEASED = {"clip": "linear", "siglip": "identity"}


def head_kind(model_config) -> str:
  """The HEADS key a `config.model` section builds: its `head`, with
  "released" resolved by the text tower's name (KeyError for another)."""
  head = model_config.get("head", "milinear")
  if head == "released":
    return RELEASED[model_config.text.get("name", "bert")]
  return head
