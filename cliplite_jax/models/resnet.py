"""ResNet v1.5 (torchvision layout: the stride sits on the 3×3 conv), NHWC.

The classifier is removed: the model returns global-average-pooled features of
width `512 * expansion * width` (2048 for ResNet-50 at width 1).

Convolutions pad like torch (k // 2 on every side), so a strided 3×3 conv's
output i is centred on input 2i as in torchvision. Two formulations keep the
backward pass on fast kernels (BENCHMARKS.md, "Where the CPU step's time
went"): 1×1 convs are matrix products on (strided) pixels, and the max pool is
a separable maximum over strided slices instead of a reduce-window, whose
gradient XLA's CPU backend runs as a slow variadic select-and-scatter.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# `Conv.im2col` applies to maps of at most this many output pixels.
_IM2COL_MAX_PIXELS = 4
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


class Conv(nn.Module):
  """Bias-free 2-D conv with torch padding; parameters as `nn.Conv`'s.

  Attributes:
    features: output channels O.
    kernel_size: (kh, kw), odd.
    strides: (sh, sw).
    im2col: run k×k convs with at most 4 output pixels (the last stage's
      2×2 maps at 64 px) as one matrix product on gathered patches: faster
      there than XLA's CPU convolution (forward and both gradients); on 4×4
      maps XLA's conv was as fast or faster (BENCHMARKS.md, "CPU
      formulations"). For CPU runs; leave False on accelerators.
    space_to_depth: run a stride-2 conv's forward as a stride-1 conv on 2×2
      blocks of pixels (`space_to_depth_conv`); its gradients stay XLA's
      own. 1.6× faster on CPU for the 3-channel stem, where XLA's
      convolution gathers 3 floats at a time; when `im2col` also applies,
      `im2col` wins.
    swap_kernel_grad: take a stride-1 conv's kernel gradient as a conv of
      the output gradient over the input (`stride_1_kernel_grad`); forward
      and input gradient stay XLA's. For CPU runs; when `im2col` also
      applies, `im2col` wins.
  """
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  im2col: bool = False
  space_to_depth: bool = False
  swap_kernel_grad: bool = False
  dtype: Any = jnp.float32
  kernel_init: Any = _conv_init

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """x: [B, H, W, C] → [B, ceil(H / sh), ceil(W / sw), O] in `dtype`."""
    kh, kw = self.kernel_size
    kernel = self.param("kernel", self.kernel_init,
                        (kh, kw, x.shape[-1], self.features), jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    sh, sw = self.strides
    if (kh, kw) == (1, 1):
      return x[:, ::sh, ::sw] @ kernel[0, 0]
    ph, pw = kh // 2, kw // 2
    _, h, w, _ = x.shape
    out_h, out_w = (h - 1) // sh + 1, (w - 1) // sw + 1
    if not (self.im2col and out_h * out_w <= _IM2COL_MAX_PIXELS):
      if self.space_to_depth and (sh, sw) == (2, 2):
        return _stride_2_conv_via_space_to_depth(x, kernel)
      if self.swap_kernel_grad and (sh, sw) == (1, 1):
        return _stride_1_conv_with_swapped_kernel_grad(x, kernel)
      return torch_padded_conv(x, kernel, self.strides)
    x = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    # Patch features ordered (i, j, c), matching kernel.reshape below.
    patches = jnp.concatenate(
        [x[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw]
         for i in range(kh) for j in range(kw)], axis=-1)
    return patches @ kernel.reshape(-1, self.features)


def torch_padded_conv(x: jnp.ndarray, kernel: jnp.ndarray,
                      strides: tuple[int, int]) -> jnp.ndarray:
  """XLA's conv with torch's k // 2 padding: x [B, H, W, C], kernel
  [kh, kw, C, O] (odd sizes) → [B, ceil(H / sh), ceil(W / sw), O], x's dtype."""
  kh, kw = kernel.shape[:2]
  return jax.lax.conv_general_dilated(
      x, kernel, strides, [(kh // 2, kh // 2), (kw // 2, kw // 2)],
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def space_to_depth_conv(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """`torch_padded_conv(x, kernel, (2, 2))` as a stride-1 conv on 2×2 blocks.

  x [B, H, W, C] is padded, then each 2×2 block of pixels becomes one pixel
  of 4C channels; the kernel [kh, kw, C, O] (odd sizes) is zero-padded to
  even sizes and folded the same way into [⌈kh/2⌉, ⌈kw/2⌉, 4C, O]. Same
  values up to float rounding; returns [B, ⌈H/2⌉, ⌈W/2⌉, O] in x's dtype.
  """
  kh, kw, c, o = kernel.shape
  b, h, w, _ = x.shape
  out_h, out_w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
  taps_h, taps_w = (kh + 1) // 2, (kw + 1) // 2
  # Padded so that the last output's taps, zero ones included, are inside.
  rows, cols = 2 * (out_h - 1 + taps_h), 2 * (out_w - 1 + taps_w)
  x = jnp.pad(x, ((0, 0), (kh // 2, rows - h - kh // 2),
                  (kw // 2, cols - w - kw // 2), (0, 0)))
  x = x.reshape(b, rows // 2, 2, cols // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  x = x.reshape(b, rows // 2, cols // 2, 4 * c)
  kernel = jnp.pad(kernel, ((0, 2 * taps_h - kh), (0, 2 * taps_w - kw),
                            (0, 0), (0, 0)))
  kernel = kernel.reshape(taps_h, 2, taps_w, 2, c, o).transpose(0, 2, 1, 3, 4, 5)
  return jax.lax.conv_general_dilated(
      x, kernel.reshape(taps_h, taps_w, 4 * c, o), (1, 1), "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_vjp
def _stride_2_conv_via_space_to_depth(x, kernel):
  """Forward: `space_to_depth_conv`; gradients: `torch_padded_conv`'s.

  XLA's kernel gradient of the direct conv is 1.5–1.7× faster than that of
  the space-to-depth one on the stem (BENCHMARKS.md), so each pass takes its
  faster form.
  """
  return space_to_depth_conv(x, kernel)


def _stride_2_conv_fwd(x, kernel):
  return space_to_depth_conv(x, kernel), (x, kernel)


def _stride_2_conv_bwd(residuals, cotangent):
  x, kernel = residuals
  _, vjp = jax.vjp(lambda x, k: torch_padded_conv(x, k, (2, 2)), x, kernel)
  return vjp(cotangent)


_stride_2_conv_via_space_to_depth.defvjp(_stride_2_conv_fwd, _stride_2_conv_bwd)


# Roles for `stride_1_kernel_grad`'s conv: the output gradient [B, H, W, O]
# is the input with O as batch and B as features; x [B, H, W, C] is the
# kernel with B in and C out; the result is [O, kh, kw, C].
_SWAPPED_ROLES = jax.lax.ConvDimensionNumbers(
    lhs_spec=(3, 0, 1, 2), rhs_spec=(3, 0, 1, 2), out_spec=(0, 3, 1, 2))


def stride_1_kernel_grad(x: jnp.ndarray, cotangent: jnp.ndarray,
                         window: tuple[int, int]) -> jnp.ndarray:
  """Kernel gradient of `torch_padded_conv(x, kernel, (1, 1))`.

  x [B, H, W, C] and cotangent [B, H, W, O] (same dtype), window (kh, kw)
  odd → [kh, kw, C, O]. XLA's own kernel gradient is a conv of x over the
  cotangent, for which XLA:CPU lays x out channels-first, batch-last: an
  element-by-element transpose that also recomputes the BatchNorm and ReLU
  that produced x. Here the cotangent, already in memory, takes that role
  and x is only reordered by rows (each pixel's channels stay contiguous):
  1.4× faster on the demo's 16-channel stage (BENCHMARKS.md, "CPU
  formulations").
  """
  kh, kw = window
  swapped = jax.lax.conv_general_dilated(
      cotangent, x, (1, 1), [(kh // 2, kh // 2), (kw // 2, kw // 2)],
      dimension_numbers=_SWAPPED_ROLES)
  # Output position (u, v) holds kernel tap (kh - 1 - u, kw - 1 - v).
  return jnp.flip(swapped, (1, 2)).transpose(1, 2, 3, 0)


@jax.custom_vjp
def _stride_1_conv_with_swapped_kernel_grad(x, kernel):
  """`torch_padded_conv` at stride 1; kernel gradient `stride_1_kernel_grad`."""
  return torch_padded_conv(x, kernel, (1, 1))


def _stride_1_conv_fwd(x, kernel):
  return torch_padded_conv(x, kernel, (1, 1)), (x, kernel)


def _stride_1_conv_bwd(residuals, cotangent):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda x: torch_padded_conv(x, kernel, (1, 1)), x)
  return (input_vjp(cotangent)[0],
          stride_1_kernel_grad(x, cotangent, kernel.shape[:2]))


_stride_1_conv_with_swapped_kernel_grad.defvjp(_stride_1_conv_fwd,
                                               _stride_1_conv_bwd)


def max_pool_3x3_stride_2(x: jnp.ndarray) -> jnp.ndarray:
  """torch's MaxPool2d(3, 2, padding=1): [B, H, W, C] → [B, ⌈H/2⌉, ⌈W/2⌉, C].

  A maximum over rows, then over columns, of three strided slices each. Ties
  share the gradient (jnp.maximum) where a reduce-window gives it to one
  element; after a ReLU, ties are zeros, whose gradient the ReLU drops.
  """
  out_h, out_w = (x.shape[1] - 1) // 2 + 1, (x.shape[2] - 1) // 2 + 1
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  x = jnp.maximum(jnp.maximum(x[:, 0:2 * out_h:2], x[:, 1:2 * out_h + 1:2]),
                  x[:, 2:2 * out_h + 2:2])
  return jnp.maximum(jnp.maximum(x[:, :, 0:2 * out_w:2],
                                 x[:, :, 1:2 * out_w + 1:2]),
                     x[:, :, 2:2 * out_w + 2:2])


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
    im2col: the CPU formulations: `Conv.im2col` and
      `Conv.swap_kernel_grad` for the blocks' convs, `Conv.space_to_depth`
      for the stem.
  """
  depth: int = 50
  width: float = 1.0
  dtype: Any = jnp.float32
  remat: bool = False
  im2col: bool = False

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
    conv = functools.partial(Conv, dtype=self.dtype, im2col=self.im2col,
                             swap_kernel_grad=self.im2col)
    # torch BatchNorm2d: momentum 0.1 (= flax 0.9), eps 1e-5.
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=0.9, epsilon=1e-5, dtype=self.dtype)
    x = images.astype(self.dtype)
    x = Conv(int(64 * self.width), (7, 7), (2, 2), dtype=self.dtype,
             space_to_depth=self.im2col, name="stem_conv")(x)
    x = max_pool_3x3_stride_2(nn.relu(norm(name="stem_norm")(x)))
    for stage, num_blocks in enumerate(stages):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = block_cls(filters=int(64 * self.width * 2**stage),
                      strides=(strides, strides), conv=conv, norm=norm,
                      name=f"stage{stage + 1}_block{block + 1}")(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
