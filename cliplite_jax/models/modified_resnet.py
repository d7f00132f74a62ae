"""OpenAI CLIP's ResNet image tower (ModifiedResNet), NHWC, and its weights.

As in CLIP's RN50/RN101/RN50x4…: a stem of three 3×3 convolutions (the
first strided) and a 2×2 average pool; bottleneck stages whose strided
blocks average-pool before the last 1×1 conv and in the shortcut
(anti-aliased striding); attention pooling, one query (the mean of the
final map) over the map's positions with a learned position embedding,
whose output projection is CLIP's image projection. BatchNorm everywhere
(eps 1e-5); `locked` runs use its running statistics, as a released model.

Parameter and statistic names follow open_clip's (`conv1`, `bn1`,
`layer{s}_{i}`, `attnpool`), so `openclip_params` maps a checkpoint by
transposes only.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from cliplite_jax.models import hf_bert, vit


class Bottleneck(nn.Module):
  """1×1 → 3×3 → (avg-pool stride) → 1×1 ×4, shortcut avg-pool + 1×1."""
  planes: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=0.9, epsilon=1e-5, dtype=self.dtype)
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    pool = lambda y: nn.avg_pool(y, (self.stride,) * 2, (self.stride,) * 2)
    out = nn.relu(norm(name="bn1")(conv(self.planes, (1, 1), name="conv1")(x)))
    out = nn.relu(norm(name="bn2")(conv(self.planes, (3, 3), padding=1,
                                        name="conv2")(out)))
    if self.stride > 1:
      out = pool(out)
    out = norm(name="bn3")(conv(4 * self.planes, (1, 1), name="conv3")(out))
    shortcut = x
    if self.stride > 1 or x.shape[-1] != 4 * self.planes:
      shortcut = pool(x) if self.stride > 1 else x
      shortcut = norm(name="downsample_bn")(
          conv(4 * self.planes, (1, 1), name="downsample_conv")(shortcut))
    return nn.relu(out + shortcut)


class AttentionPool(nn.Module):
  """The mean token attends over [mean, positions] (+ position embedding);
  q/k/v/c projections with biases; `c_proj` maps to `output_dim`."""
  heads: int
  output_dim: int
  grid: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    tokens = x.reshape(b, h * w, c)
    tokens = jnp.concatenate([tokens.mean(axis=1, keepdims=True), tokens], 1)
    posemb = self.param("positional_embedding",
                        nn.initializers.normal(stddev=c ** -0.5),
                        (self.grid * self.grid + 1, c), jnp.float32)
    if (h, w) != (self.grid, self.grid):
      posemb = jnp.concatenate([posemb[:1],
                                vit.resize_posemb(posemb[1:], (h, w))])
    tokens = tokens + posemb.astype(tokens.dtype)
    dense = functools.partial(nn.Dense, dtype=self.dtype)
    head_dim = c // self.heads
    split = lambda y: y.reshape(b, -1, self.heads, head_dim)
    q = split(dense(c, name="q_proj")(tokens[:, :1]))
    k = split(dense(c, name="k_proj")(tokens))
    v = split(dense(c, name="v_proj")(tokens))
    weights = nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(
        jnp.float32) / np.sqrt(head_dim), axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, c)
    return dense(self.output_dim, name="c_proj")(out)


class ModifiedResNet(nn.Module):
  """images float [B, H, W, 3] → float32 [B, output_dim].

  Attributes:
    layers: bottleneck blocks per stage (RN50: (3, 4, 6, 3)).
    width: the stem's output channels (64); stage s has width·2^s planes,
      the final map width·32 channels.
    heads: attention-pooling heads (open_clip: width·32 // 64).
    output_dim: the pooled output width (CLIP's embedding width).
    grid: the side of the final map the position embedding is for
      (image_size // 32); other sizes are resized (bicubic).
  """
  layers: tuple[int, ...] = (3, 4, 6, 3)
  width: int = 64
  heads: int = 32
  output_dim: int = 1024
  grid: int = 7
  dtype: Any = jnp.float32

  @property
  def num_features(self) -> int:
    return self.output_dim

  @nn.compact
  def __call__(self, images: jnp.ndarray, train: bool) -> jnp.ndarray:
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=0.9, epsilon=1e-5, dtype=self.dtype)
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             padding=1)
    x = images.astype(self.dtype)
    for i, (features, stride) in enumerate(((self.width // 2, 2),
                                            (self.width // 2, 1),
                                            (self.width, 1)), start=1):
      x = nn.relu(norm(name=f"bn{i}")(conv(features, (3, 3), (stride,) * 2,
                                           name=f"conv{i}")(x)))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    for stage, blocks in enumerate(self.layers):
      for i in range(blocks):
        x = Bottleneck(self.width * 2 ** stage,
                       2 if stage and not i else 1, self.dtype,
                       name=f"layer{stage + 1}_{i}")(x, train)
    out = AttentionPool(self.heads, self.output_dim, self.grid, self.dtype,
                        name="attnpool")(x)
    return out.astype(jnp.float32)


def openclip_variables(tensors: Mapping[str, np.ndarray],
                       layers: tuple[int, ...]) -> dict:
  """{"params", "batch_stats"} (float32 numpy trees) of a `ModifiedResNet`
  from an open_clip CLIP state dict's "visual.*" tensors; KeyError naming
  a missing tensor."""
  params, stats = {}, {}
  put = hf_bert.tree_set

  def conv(ours: tuple, theirs: str):
    put(params, (*ours, "kernel"),
        tensors[f"{theirs}.weight"].transpose(2, 3, 1, 0))

  def bn(ours: tuple, theirs: str):
    put(params, (*ours, "scale"), tensors[f"{theirs}.weight"])
    put(params, (*ours, "bias"), tensors[f"{theirs}.bias"])
    put(stats, (*ours, "mean"), tensors[f"{theirs}.running_mean"])
    put(stats, (*ours, "var"), tensors[f"{theirs}.running_var"])

  for i in (1, 2, 3):
    conv((f"conv{i}",), f"visual.conv{i}")
    bn((f"bn{i}",), f"visual.bn{i}")
  for stage, blocks in enumerate(layers, start=1):
    for i in range(blocks):
      ours, theirs = f"layer{stage}_{i}", f"visual.layer{stage}.{i}"
      for j in (1, 2, 3):
        conv((ours, f"conv{j}"), f"{theirs}.conv{j}")
        bn((ours, f"bn{j}"), f"{theirs}.bn{j}")
      if f"{theirs}.downsample.0.weight" in tensors:
        conv((ours, "downsample_conv"), f"{theirs}.downsample.0")
        bn((ours, "downsample_bn"), f"{theirs}.downsample.1")
  pool = "visual.attnpool"
  put(params, ("attnpool", "positional_embedding"),
      tensors[f"{pool}.positional_embedding"])
  for proj in ("q_proj", "k_proj", "v_proj", "c_proj"):
    put(params, ("attnpool", proj, "kernel"),
        tensors[f"{pool}.{proj}.weight"].T)
    put(params, ("attnpool", proj, "bias"), tensors[f"{pool}.{proj}.bias"])
  return {"params": params, "batch_stats": stats}

