"""ResNet v1.5 (torchvision layout: the stride sits on the 3×3 conv), NHWC.

The classifier is removed: the model returns global-average-pooled features of
width `512 * expansion * width` (2048 for ResNet-50 at width 1).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu").
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# (block kind, blocks per stage) for each depth.
LAYOUTS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


class ResidualBlock(nn.Module):
  """Fields shared by the blocks; `conv` and `norm` are layer factories."""
  filters: int
  strides: tuple[int, int]
  conv: Any
  norm: Any

  def shortcut(self, x, y):
    """Identity, or a strided 1×1 conv + BN where the block changes shape.

    Called from the subclass's compact __call__, so the layers belong to it.
    """
    if x.shape == y.shape:
      return x
    x = self.conv(y.shape[-1], (1, 1), self.strides, name="downsample_conv")(x)
    return self.norm(name="downsample_norm")(x)


class BasicBlock(ResidualBlock):
  """Two 3×3 convs (ResNet-18/34)."""

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.filters, (3, 3), self.strides)(x)
    y = nn.relu(self.norm()(y))
    y = self.norm()(self.conv(self.filters, (3, 3))(y))
    return nn.relu(y + self.shortcut(x, y))


class Bottleneck(ResidualBlock):
  """1×1 → 3×3 (strided: v1.5) → 1×1 with 4× the channels (ResNet-50+)."""

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm()(self.conv(self.filters, (1, 1))(x)))
    y = nn.relu(self.norm()(self.conv(self.filters, (3, 3), self.strides)(y)))
    y = self.norm()(self.conv(self.filters * 4, (1, 1))(y))
    return nn.relu(y + self.shortcut(x, y))


class ResNet(nn.Module):
  """ResNet-{18,34,50,101,152} v1.5 trunk.

  Attributes:
    depth: one of LAYOUTS.
    width: multiplier on every stage's channel count (1.0 is torchvision's).
    dtype: compute dtype; parameters stay float32.
    remat: recompute each block's activations in the backward pass instead
      of storing them (less memory, about one more forward of compute).
  """
  depth: int = 50
  width: float = 1.0
  dtype: Any = jnp.float32
  remat: bool = False

  @property
  def num_features(self) -> int:
    kind, _ = LAYOUTS[self.depth]
    expansion = 4 if kind == "bottleneck" else 1
    return int(512 * self.width) * expansion

  @nn.compact
  def __call__(self, images: jnp.ndarray, train: bool) -> jnp.ndarray:
    """images: float [B, H, W, 3] → pooled features float32 [B, num_features]."""
    kind, stages = LAYOUTS[self.depth]
    block_cls = Bottleneck if kind == "bottleneck" else BasicBlock
    if self.remat:
      block_cls = nn.remat(block_cls)
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             kernel_init=_conv_init, padding="SAME")
    # torch BatchNorm2d: momentum 0.1 (= flax 0.9), eps 1e-5.
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=0.9, epsilon=1e-5, dtype=self.dtype)
    x = images.astype(self.dtype)
    x = conv(int(64 * self.width), (7, 7), (2, 2),
             padding=[(3, 3), (3, 3)], name="stem_conv")(x)
    x = nn.relu(norm(name="stem_norm")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, num_blocks in enumerate(stages):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = block_cls(filters=int(64 * self.width * 2**stage),
                      strides=(strides, strides), conv=conv, norm=norm,
                      name=f"stage{stage + 1}_block{block + 1}")(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
