"""CLIP's and SigLIP's text transformers: pre-LayerNorm, learned positions.

One module covers both. OpenAI CLIP (HF `CLIPTextModel`): causal attention,
quick-GELU, features at the end-of-text token. SigLIP (HF `SiglipTextModel`):
bidirectional attention, tanh-GELU, features at the sequence's last position
through a `head` Dense. Parameter names follow the HF layout (token_embedding,
position_embedding, layer_i/{layer_norm1, self_attn, layer_norm2, fc1, fc2},
final_layer_norm, head) so `hf_text` maps checkpoints one to one.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cliplite_jax.models.activations import ACTIVATIONS

POOLINGS = ("eot", "last")


class Block(nn.Module):
  """Pre-LN residual block: x + attn(LN(x)), then x + mlp(LN(x))."""
  width: int
  heads: int
  mlp_dim: int
  layers: int  # of the whole tower, for the residual-branch init scale
  act: str
  dropout: float
  layer_norm_eps: float
  dtype: Any

  @nn.compact
  def __call__(self, x, mask, train: bool):
    # OpenAI CLIP's init: residual-branch outputs shrink with depth.
    attn_std = self.width ** -0.5
    proj_std = attn_std * (2 * self.layers) ** -0.5
    fc_std = (2 * self.width) ** -0.5
    norm = functools.partial(nn.LayerNorm, epsilon=self.layer_norm_eps,
                             dtype=self.dtype)
    drop = functools.partial(nn.Dropout, rate=self.dropout,
                             deterministic=not train)
    h = norm(name="layer_norm1")(x)
    # Softmax in float32 under bfloat16, as HF's eager attention does.
    attended = nn.MultiHeadDotProductAttention(
        num_heads=self.heads, dtype=self.dtype,
        kernel_init=nn.initializers.normal(attn_std),
        out_kernel_init=nn.initializers.normal(proj_std),
        dropout_rate=self.dropout, broadcast_dropout=False,
        deterministic=not train, force_fp32_for_softmax=True,
        name="self_attn")(h, h, mask=mask)
    x = x + drop()(attended)
    h = nn.Dense(self.mlp_dim, dtype=self.dtype,
                 kernel_init=nn.initializers.normal(fc_std),
                 name="fc1")(norm(name="layer_norm2")(x))
    h = nn.Dense(self.width, dtype=self.dtype,
                 kernel_init=nn.initializers.normal(proj_std),
                 name="fc2")(ACTIVATIONS[self.act](h))
    return x + drop()(h)


class CLIPTextTransformer(nn.Module):
  """CLIP / SigLIP text tower, with our BERT `TextEncoder`'s interface.

  Attributes:
    vocab_size, width, layers, heads, mlp_dim, max_len: the architecture
      (OpenAI CLIP ViT-B: 49408, 512, 12, 8, 2048, 77; SigLIP base: 32000,
      768, 12, 12, 3072, 64).
    pooling: "eot" (CLIP) — the final-LayerNorm features at the last real
      token, index sum(attention_mask) − 1. OpenAI CLIP and HF pool at the
      end-of-text token (`argmax(input_ids)`, or the first `eos_token_id`);
      the two agree when every caption ends with that token and is padded on
      the right, as CLIP's tokenizer does (truncation keeps the end token).
      "last" (SigLIP) — the features at position L − 1 whatever the mask:
      SigLIP pads to a fixed length and was trained pooling there.
    causal: causal self-attention (CLIP True, SigLIP False).
    mask_padding: also hide padding keys (`attention_mask` 0) from attention.
      CLIP (HF combines the padding mask with the causal one): True; with
      right padding it changes only the outputs at padded positions. SigLIP
      was trained attending to its padding and HF's SigLIP tokenizer returns
      no mask, so HF's default (no mask) is mask_padding False.
    act: "quick_gelu" (OpenAI CLIP), "gelu" (exact), "gelu_tanh" (SigLIP).
    layer_norm_eps: 1e-5 CLIP, 1e-6 SigLIP.
    projection: P > 0 adds `head`, a Dense (with bias) hidden → P on the
      pooled features, as HF's SiglipTextModel; 0, none (CLIPTextModel).
    dropout: on attention probabilities and residual branches (CLIP and
      SigLIP have none; it is here because the trainer passes `train`).
    dtype: compute dtype (the residual stream too); parameters stay float32.
    remat: recompute each block's activations in the backward pass.
  """
  vocab_size: int = 49408
  width: int = 512
  layers: int = 12
  heads: int = 8
  mlp_dim: int = 2048
  max_len: int = 77
  pooling: str = "eot"
  causal: bool = True
  mask_padding: bool = True
  act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  projection: int = 0
  dropout: float = 0.0
  dtype: Any = jnp.float32
  remat: bool = False

  @property
  def num_features(self) -> int:
    return self.projection or self.width

  @nn.compact
  def __call__(self, input_ids: jnp.ndarray, attention_mask: jnp.ndarray,
               train: bool = False) -> dict[str, jnp.ndarray]:
    """Encodes token ids.

    Args:
      input_ids: int32 [B, L], L ≤ max_len, padded on the right.
      attention_mask: int32 [B, L], 1 for real tokens, 0 for padding.
      train: enables dropout (needs the "dropout" rng when dropout > 0).

    Returns:
      dict with "last_hidden_state" [B, L, width] (after the final
      LayerNorm, compute dtype), "pooler_output" [B, num_features] (HF's
      pooler_output: the pooled token, through `head` if any) and
      "features", the same in float32.
    """
    if self.pooling not in POOLINGS:
      raise ValueError(f"pooling must be one of {POOLINGS}, "
                       f"got {self.pooling!r}")
    if self.act not in ACTIVATIONS:
      raise ValueError(f"act must be one of {tuple(ACTIVATIONS)}, "
                       f"got {self.act!r}")
    batch, length = input_ids.shape
    if length > self.max_len:
      raise ValueError(f"{length} tokens exceed max_len {self.max_len}")
    x = (nn.Embed(self.vocab_size, self.width, name="token_embedding",
                  embedding_init=nn.initializers.normal(0.02))(input_ids)
         + nn.Embed(self.max_len, self.width, name="position_embedding",
                    embedding_init=nn.initializers.normal(0.01))(
                        jnp.arange(length)[None]))
    x = x.astype(self.dtype)
    mask = None  # bool [B or 1, 1, L, L] or [B, 1, 1, L]: True attends.
    if self.causal:
      mask = jnp.tril(jnp.ones((length, length), bool))[None, None]
    if self.mask_padding:
      keys = attention_mask[:, None, None, :].astype(bool)
      mask = keys if mask is None else mask & keys
    # `train` (argument 3, counting self) decides dropout: static under remat.
    block_cls = nn.remat(Block, static_argnums=(3,)) if self.remat else Block
    for i in range(self.layers):
      x = block_cls(self.width, self.heads, self.mlp_dim, self.layers,
                    self.act, self.dropout, self.layer_norm_eps, self.dtype,
                    name=f"layer_{i}")(x, mask, train)
    x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                     name="final_layer_norm")(x)
    if self.pooling == "eot":
      index = jnp.maximum(jnp.sum(attention_mask, axis=1) - 1, 0)
    else:
      index = jnp.full((batch,), length - 1)
    pooled = x[jnp.arange(batch), index]
    if self.projection:
      # SigLIP's `head` (nn.Linear: lecun-normal init in HF's SigLIP).
      pooled = nn.Dense(self.projection, dtype=self.dtype, name="head")(pooled)
    return {"last_hidden_state": x, "pooler_output": pooled,
            "features": pooled.astype(jnp.float32)}
