"""BERT-style text encoder: post-LayerNorm, exact-erf GELU, learned positions.

Parameter names follow the Hugging Face `BertModel` layout (embeddings,
layer_i/attention, intermediate, output, pooler) so pretrained weights map onto
it one to one.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

POOLINGS = ("pooler", "mean", "cls")
_init = nn.initializers.normal(stddev=0.02)  # BERT's initializer_range.


class TransformerLayer(nn.Module):
  """Self-attention + feed-forward, each followed by residual + LayerNorm."""
  hidden: int
  heads: int
  mlp_dim: int
  dropout: float
  dtype: Any

  @nn.compact
  def __call__(self, x, key_mask, train: bool):
    dense = functools.partial(nn.Dense, kernel_init=_init, dtype=self.dtype)
    norm = functools.partial(nn.LayerNorm, epsilon=1e-12, dtype=self.dtype)
    drop = functools.partial(nn.Dropout, rate=self.dropout,
                             deterministic=not train)
    attended = nn.MultiHeadDotProductAttention(
        num_heads=self.heads, dtype=self.dtype, kernel_init=_init,
        dropout_rate=self.dropout, deterministic=not train,
        name="attention")(x, x, mask=key_mask)
    x = norm(name="attention_norm")(x + drop()(attended))
    h = nn.gelu(dense(self.mlp_dim, name="intermediate")(x), approximate=False)
    h = dense(self.hidden, name="output")(h)
    return norm(name="output_norm")(x + drop()(h))


class TextEncoder(nn.Module):
  """BERT encoder.

  Attributes:
    vocab_size, hidden, layers, heads, mlp_dim, max_len: the architecture
      (BERT-base: 30522, 768, 12, 12, 3072, 512).
    pooling: "pooler" (tanh dense on the first token, BERT's pooler_output),
      "mean" (over unmasked tokens) or "cls" (first token, no dense).
    dropout: on embeddings, attention probabilities and residual branches.
    dtype: compute dtype; parameters stay float32.
  """
  vocab_size: int = 30522
  hidden: int = 768
  layers: int = 12
  heads: int = 12
  mlp_dim: int = 3072
  max_len: int = 512
  pooling: str = "pooler"
  dropout: float = 0.1
  dtype: Any = jnp.float32

  @property
  def num_features(self) -> int:
    return self.hidden

  @nn.compact
  def __call__(self, input_ids: jnp.ndarray, attention_mask: jnp.ndarray,
               train: bool) -> dict[str, jnp.ndarray]:
    """Encodes token ids.

    Args:
      input_ids: int32 [B, L], L ≤ max_len.
      attention_mask: int32 [B, L], 1 for real tokens, 0 for padding.
      train: enables dropout (needs the "dropout" rng).

    Returns:
      dict with "last_hidden_state" [B, L, hidden], "features" float32
      [B, hidden] (the pooled text feature) and, for pooling="pooler",
      "pooler_output" [B, hidden].
    """
    if self.pooling not in POOLINGS:
      raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
    length = input_ids.shape[1]
    embed = functools.partial(nn.Embed, features=self.hidden,
                              embedding_init=_init)
    x = (embed(self.vocab_size, name="word_embeddings")(input_ids)
         + embed(self.max_len, name="position_embeddings")(
             jnp.arange(length)[None])
         + embed(2, name="token_type_embeddings")(jnp.zeros_like(input_ids)))
    x = nn.LayerNorm(epsilon=1e-12, dtype=self.dtype, name="embeddings_norm")(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x).astype(self.dtype)
    # Masks keys only, as BERT does; padded query rows still get outputs.
    key_mask = attention_mask[:, None, None, :].astype(bool)
    for i in range(self.layers):
      x = TransformerLayer(self.hidden, self.heads, self.mlp_dim, self.dropout,
                           self.dtype, name=f"layer_{i}")(x, key_mask, train)
    out = {"last_hidden_state": x}
    if self.pooling == "pooler":
      first = x[:, 0]
      out["pooler_output"] = jnp.tanh(nn.Dense(
          self.hidden, kernel_init=_init, dtype=self.dtype, name="pooler")(first))
      out["features"] = out["pooler_output"]
    elif self.pooling == "mean":
      weights = attention_mask.astype(jnp.float32)[..., None]
      out["features"] = (jnp.sum(x.astype(jnp.float32) * weights, axis=1)
                         / jnp.maximum(jnp.sum(weights, axis=1), 1.0))
    else:
      out["features"] = x[:, 0]
    out["features"] = out["features"].astype(jnp.float32)
    return out
