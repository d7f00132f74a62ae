"""Vision Transformer image tower, NHWC, with CLIP's and SigLIP's options.

Pre-LayerNorm blocks (LN → attention → residual, LN → MLP → residual) as in
OpenAI CLIP, open_clip and SigLIP. Attention projections are separate Dense
layers with [width, width] kernels, so Hugging Face `CLIPVisionModel` and
`SiglipVisionModel` weights map onto the tree by a transpose
(`hf_vision`).

Parameter tree (float32): patch_embed {kernel [p, p, 3, D], bias [D]},
cls [1, 1, D] (class_token), pos_embed [1, n² (+1), D] (posemb "learn"),
ln_pre (pre_norm), block_{i} {ln_1, attn {query, key, value, out}, ln_2,
mlp {fc1, fc2}} — or, with scan, one `blocks` subtree whose leaves carry a
leading [depth] axis — ln_post, and for pool "map" map_head {probe
[1, 1, D], attn, ln, mlp}.
"""
from __future__ import annotations

import functools
import math
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cliplite_jax.models.activations import ACTIVATIONS

# (width, depth, heads, mlp_dim), as big_vision's ViT table.
VARIANTS = {"Ti": (192, 12, 3, 768), "S": (384, 12, 6, 1536),
            "B": (768, 12, 12, 3072), "L": (1024, 24, 16, 4096),
            "So400m": (1152, 27, 16, 4304)}
POOLS = ("token", "gap", "map")
POSEMBS = ("learn", "sincos2d")
RESIZES = ("bicubic", "bilinear")

# big_vision's initialisers: Xavier-uniform projections, near-zero MLP biases.
_dense_init = nn.initializers.xavier_uniform()
_mlp_bias_init = nn.initializers.normal(stddev=1e-6)


def parse_variant(name: str) -> dict[str, int]:
  """"B/16" → dict(width=768, depth=12, heads=12, mlp_dim=3072, patch=16).

  SIZE is a key of VARIANTS, PATCH any positive integer. Raises ValueError
  (one line) for anything else.
  """
  match = re.fullmatch(r"(\w+)/(\d+)", str(name))
  if not match or match[1] not in VARIANTS or int(match[2]) <= 0:
    raise ValueError(f"unknown ViT variant {name!r}: expected SIZE/PATCH with "
                     f"SIZE one of {', '.join(VARIANTS)} and PATCH a positive "
                     f"integer, e.g. 'B/16'")
  width, depth, heads, mlp_dim = VARIANTS[match[1]]
  return dict(width=width, depth=depth, heads=heads, mlp_dim=mlp_dim,
              patch=int(match[2]))


def posemb_sincos2d(h: int, w: int, width: int,
                    temperature: float = 10_000.0) -> np.ndarray:
  """big_vision's fixed 2-D sin-cos position embedding: float32 [h·w, width].

  Row-major over the grid; features are [sin(x·ω), cos(x·ω), sin(y·ω),
  cos(y·ω)] with ω_k = temperature^(-k / (width/4 - 1)), k < width/4
  (width must be a multiple of 4, and at least 8).
  """
  if width % 4 or width < 8:
    raise ValueError(f"sincos2d needs width a multiple of 4 (≥ 8), got {width}")
  quarter = width // 4
  omega = 1.0 / temperature ** (np.arange(quarter) / (quarter - 1))
  y, x = np.mgrid[:h, :w]
  x = x.reshape(-1, 1) * omega
  y = y.reshape(-1, 1) * omega
  return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)],
                        axis=1).astype(np.float32)


def resize_matrix(in_size: int, out_size: int, method: str) -> np.ndarray:
  """float64 [out_size, in_size]: one axis of torch's `F.interpolate(...,
  mode=method, align_corners=False)` without antialias, as a matrix.

  Source of output i is (i + ½)·in/out − ½; bilinear clamps it at 0; taps
  beyond the edge repeat the edge value, as torch's kernels do.
  """
  # torch's cubic convolution (Keys, A = -0.75): taps at distance ≤ 1, 1–2.
  a = -0.75
  near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1
  far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  matrix = np.zeros((out_size, in_size))
  for i in range(out_size):
    source = (i + 0.5) * in_size / out_size - 0.5
    if method == "bilinear":
      source = max(source, 0.0)
      low = min(int(math.floor(source)), in_size - 1)
      t = source - low
      matrix[i, low] += 1 - t
      matrix[i, min(low + 1, in_size - 1)] += t
    elif method == "bicubic":
      low = int(math.floor(source))
      t = source - low
      for j, weight in enumerate([far(t + 1), near(t), near(1 - t),
                                  far(2 - t)]):
        matrix[i, min(max(low - 1 + j, 0), in_size - 1)] += weight
    else:
      raise ValueError(f"resize must be one of {RESIZES}, got {method!r}")
  return matrix


def resize_posemb(posemb: jnp.ndarray, grid: tuple[int, int],
                  method: str = "bicubic") -> jnp.ndarray:
  """A square grid's patch position embeddings [n·n, D] resized to
  `grid` (gh, gw) → [gh·gw, D], posemb's dtype.

  Exactly HF's `interpolate_pos_encoding` for "bicubic" (torch bicubic,
  align_corners=False, no antialias); open_clip's `resize_pos_embed` adds
  antialias, which differs only when shrinking.
  """
  n = math.isqrt(posemb.shape[0])
  if n * n != posemb.shape[0]:
    raise ValueError(f"{posemb.shape[0]} position embeddings are not a square "
                     f"grid")
  rows = jnp.asarray(resize_matrix(n, grid[0], method), jnp.float32)
  cols = jnp.asarray(resize_matrix(n, grid[1], method), jnp.float32)
  out = jnp.einsum("ih,jw,hwd->ijd", rows, cols,
                   posemb.reshape(n, n, -1).astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST)
  return out.reshape(grid[0] * grid[1], -1).astype(posemb.dtype)


class Attention(nn.Module):
  """Multi-head dot-product attention, query/key/value/out Dense [D, D]."""
  heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, queries: jnp.ndarray, inputs: jnp.ndarray) -> jnp.ndarray:
    """queries [B, Q, D] attend over inputs [B, T, D] → [B, Q, D] in dtype."""
    width = inputs.shape[-1]
    dense = functools.partial(nn.Dense, width, dtype=self.dtype,
                              kernel_init=_dense_init)
    split = lambda y: y.reshape(*y.shape[:2], self.heads, width // self.heads)
    q = split(dense(name="query")(queries))
    k = split(dense(name="key")(inputs))
    v = split(dense(name="value")(inputs))
    # Logits and softmax in float32 whatever the compute dtype: bf16 logits
    # lose the small differences softmax amplifies.
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k,
                        preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits / math.sqrt(width // self.heads))
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(self.dtype), v)
    return dense(name="out")(out.reshape(*out.shape[:2], width))


class Mlp(nn.Module):
  """Dense fc1 (mlp_dim) → activation → Dense fc2 (back to D)."""
  mlp_dim: int
  act: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """x [..., D] → [..., D] in dtype."""
    dense = functools.partial(nn.Dense, dtype=self.dtype,
                              kernel_init=_dense_init,
                              bias_init=_mlp_bias_init)
    width = x.shape[-1]
    x = ACTIVATIONS[self.act](dense(self.mlp_dim, name="fc1")(x))
    return dense(width, name="fc2")(x)


class _Layer(nn.Module):
  """Fields shared by Block and MapHead."""
  heads: int
  mlp_dim: int
  act: str
  layer_norm_eps: float
  dtype: Any = jnp.float32


class Block(_Layer):
  """Pre-LN encoder block; (x, unused) → (x, None) so nn.scan can carry x."""

  @nn.compact
  def __call__(self, x: jnp.ndarray, unused=None):
    """x [B, T, D] in dtype → ([B, T, D] in dtype, None)."""
    del unused
    norm = functools.partial(nn.LayerNorm, epsilon=self.layer_norm_eps,
                             dtype=self.dtype)
    y = norm(name="ln_1")(x)
    x = x + Attention(self.heads, self.dtype, name="attn")(y, y)
    y = norm(name="ln_2")(x)
    return x + Mlp(self.mlp_dim, self.act, self.dtype, name="mlp")(y), None


class MapHead(_Layer):
  """Multihead attention pooling, as HF `SiglipMultiheadAttentionPoolingHead`:
  a learned probe attends over the tokens, then LN → MLP → residual."""

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """x [B, T, D] → pooled [B, D] in dtype."""
    probe = self.param("probe", _dense_init, (1, 1, x.shape[-1]), jnp.float32)
    probe = jnp.broadcast_to(probe.astype(self.dtype), (x.shape[0],
                                                        *probe.shape[1:]))
    x = Attention(self.heads, self.dtype, name="attn")(probe, x)
    y = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                     name="ln")(x)
    x = x + Mlp(self.mlp_dim, self.act, self.dtype, name="mlp")(y)
    return x[:, 0]


class ViT(nn.Module):
  """Vision Transformer trunk returning pooled features (no classifier).

  Attributes:
    width, depth, heads, mlp_dim, patch: the architecture (`parse_variant`).
    pool: "token" (class token, then ln_post: CLIP), "gap" (mean of the
      patch tokens, then ln_post) or "map" (ln_post on every token, then
      SigLIP's attention-pooling head).
    posemb: "learn" (added to every token, the class token's included) or
      "sincos2d" (fixed, `posemb_sincos2d`; the class token gets none).
    class_token: prepend a learned token.
    pre_norm: LayerNorm after the embedding (CLIP's ln_pre).
    layer_norm_eps: every LayerNorm's epsilon (CLIP 1e-5, SigLIP 1e-6).
    act: MLP activation, a key of ACTIVATIONS.
    dtype: compute dtype; parameters stay float32, features come out float32.
    remat: recompute each block's activations in the backward pass.
    scan: run the blocks as one nn.scan over depth (params stacked under
      `blocks`; `hf_vision.stack_blocks` converts), for faster compiles.
    posemb_grid: the n of the learned n×n position grid; an input whose
      grid differs gets it resized (`resize_posemb`, class position
      untouched). None: the grid of the input at init, never resized.
    posemb_resize: "bicubic" (HF's `interpolate_pos_encoding`) or "bilinear".
  """
  width: int = 768
  depth: int = 12
  heads: int = 12
  mlp_dim: int = 3072
  patch: int = 16
  pool: str = "token"
  posemb: str = "learn"
  class_token: bool = True
  pre_norm: bool = False
  layer_norm_eps: float = 1e-6
  act: str = "gelu"
  dtype: Any = jnp.float32
  remat: bool = False
  scan: bool = False
  posemb_grid: int | None = None
  posemb_resize: str = "bicubic"

  @property
  def num_features(self) -> int:
    return self.width

  def _check(self) -> None:
    for field, allowed in (("pool", POOLS), ("posemb", POSEMBS),
                           ("act", tuple(ACTIVATIONS)),
                           ("posemb_resize", RESIZES)):
      if getattr(self, field) not in allowed:
        raise ValueError(f"ViT: {field} must be one of {allowed}, got "
                         f"{getattr(self, field)!r}")
    if self.width % self.heads:
      raise ValueError(f"ViT: width {self.width} is not a multiple of heads "
                       f"{self.heads}")
    if self.pool == "token" and not self.class_token:
      raise ValueError("ViT: pool 'token' needs class_token=True")

  def _position_embedding(self, grid: tuple[int, int]) -> jnp.ndarray:
    """Float32 [tokens, D] added to the [cls +] patch tokens of `grid`."""
    if self.posemb == "sincos2d":
      fixed = posemb_sincos2d(*grid, self.width)
      if self.class_token:
        fixed = np.concatenate([np.zeros((1, self.width), np.float32), fixed])
      return jnp.asarray(fixed)
    stored = ((self.posemb_grid,) * 2 if self.posemb_grid is not None
              else grid)
    posemb = self.param(
        "pos_embed", nn.initializers.normal(stddev=self.width ** -0.5),
        (1, self.class_token + stored[0] * stored[1], self.width),
        jnp.float32)[0]
    if tuple(stored) == tuple(grid):
      return posemb
    patches = resize_posemb(posemb[self.class_token:], grid,
                            self.posemb_resize)
    return jnp.concatenate([posemb[:self.class_token], patches])

  @nn.compact
  def __call__(self, images: jnp.ndarray, train: bool) -> jnp.ndarray:
    """images: float [B, H, W, 3] → pooled features float32 [B, width].

    The grid is (H // patch, W // patch); leftover pixels are dropped, as
    torch's conv does. `train` changes nothing (no dropout, no batch
    statistics); it keeps the ResNet tower's interface. The token sequence
    after the blocks is sown as intermediates/encoded [B, T, D].
    """
    del train
    self._check()
    norm = functools.partial(nn.LayerNorm, epsilon=self.layer_norm_eps,
                             dtype=self.dtype)
    x = nn.Conv(self.width, (self.patch, self.patch),
                strides=(self.patch, self.patch), padding="VALID",
                dtype=self.dtype, kernel_init=nn.initializers.lecun_normal(),
                name="patch_embed")(images.astype(self.dtype))
    b, gh, gw, _ = x.shape
    x = x.reshape(b, gh * gw, self.width)
    if self.class_token:
      cls = self.param("cls", nn.initializers.zeros, (1, 1, self.width),
                       jnp.float32)
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype),
                                            (b, 1, self.width)), x], axis=1)
    x = x + self._position_embedding((gh, gw)).astype(self.dtype)
    if self.pre_norm:
      x = norm(name="ln_pre")(x)
    block = Block
    if self.remat:
      # Inside scan the loop already keeps XLA from merging the recompute
      # with the forward, so CSE prevention only costs there.
      block = nn.remat(block, prevent_cse=not self.scan)
    fields = dict(heads=self.heads, mlp_dim=self.mlp_dim, act=self.act,
                  layer_norm_eps=self.layer_norm_eps, dtype=self.dtype)
    if self.scan:
      x, _ = nn.scan(block, variable_axes={"params": 0},
                     split_rngs={"params": True}, length=self.depth)(
                         **fields, name="blocks")(x, None)
    else:
      for i in range(self.depth):
        x, _ = block(**fields, name=f"block_{i}")(x, None)
    self.sow("intermediates", "encoded", x)
    if self.pool == "token":
      out = norm(name="ln_post")(x[:, 0])
    elif self.pool == "gap":
      out = norm(name="ln_post")(
          jnp.mean(x[:, self.class_token:].astype(jnp.float32), axis=1))
    else:
      out = MapHead(self.heads, self.mlp_dim, self.act, self.layer_norm_eps,
                    self.dtype, name="map_head")(norm(name="ln_post")(x))
    return out.astype(jnp.float32)
