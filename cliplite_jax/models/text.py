"""BERT-style text encoder: post-LayerNorm, exact-erf GELU, learned positions.

Parameter names follow the Hugging Face `BertModel` layout (embeddings,
layer_i/attention, intermediate, output, pooler) so pretrained weights map onto
it one to one.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cliplite_jax.models import hf_bert
from cliplite_jax.models.activations import gelu

POOLINGS = ("pooler", "mean", "cls")
_init = nn.initializers.normal(stddev=0.02)  # BERT's initializer_range.


class TransformerLayer(nn.Module):
  """Self-attention + feed-forward, each followed by residual + LayerNorm."""
  hidden: int
  heads: int
  mlp_dim: int
  dropout: float
  layer_norm_eps: float
  dtype: Any

  @nn.compact
  def __call__(self, x, key_mask, train: bool):
    dense = functools.partial(nn.Dense, kernel_init=_init, dtype=self.dtype)
    norm = functools.partial(nn.LayerNorm, epsilon=self.layer_norm_eps,
                             dtype=self.dtype)
    drop = functools.partial(nn.Dropout, rate=self.dropout,
                             deterministic=not train)
    # BERT drops attention probabilities one by one (flax's default shares
    # one mask across the batch and heads).
    attended = nn.MultiHeadDotProductAttention(
        num_heads=self.heads, dtype=self.dtype, kernel_init=_init,
        dropout_rate=self.dropout, broadcast_dropout=False,
        deterministic=not train, name="attention")(x, x, mask=key_mask)
    x = norm(name="attention_norm")(x + drop()(attended))
    h = gelu(dense(self.mlp_dim, name="intermediate")(x))
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
    type_vocab_size, layer_norm_eps: as BERT's config (2, 1e-12).
    dtype: compute dtype; parameters stay float32.
    remat: recompute each layer's activations in the backward pass.
  """
  vocab_size: int = 30522
  hidden: int = 768
  layers: int = 12
  heads: int = 12
  mlp_dim: int = 3072
  max_len: int = 512
  pooling: str = "pooler"
  dropout: float = 0.1
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  dtype: Any = jnp.float32
  remat: bool = False

  @property
  def num_features(self) -> int:
    return self.hidden

  @nn.compact
  def __call__(self, input_ids: jnp.ndarray, attention_mask: jnp.ndarray,
               train: bool = False) -> dict[str, jnp.ndarray]:
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
         + embed(self.type_vocab_size, name="token_type_embeddings")(
             jnp.zeros_like(input_ids)))
    x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                     name="embeddings_norm")(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x).astype(self.dtype)
    # Masks keys only, as BERT does; padded query rows still get outputs.
    key_mask = attention_mask[:, None, None, :].astype(bool)
    # `train` (argument 3, counting self) decides dropout: static under remat.
    layer_cls = (nn.remat(TransformerLayer, static_argnums=(3,)) if self.remat
                 else TransformerLayer)
    for i in range(self.layers):
      x = layer_cls(self.hidden, self.heads, self.mlp_dim, self.dropout,
                           self.layer_norm_eps, self.dtype,
                           name=f"layer_{i}")(x, key_mask, train)
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


def load_pretrained(path: str, dtype: Any = jnp.float32,
                    pooling: str | None = None) -> tuple[TextEncoder, dict]:
  """A local Hugging Face BERT-architecture checkpoint as our encoder.

  Reads PATH/config.json and PATH/model.safetensors (or pytorch_model.bin,
  which needs torch). `pooling` defaults to "pooler" when the checkpoint has
  BERT's pooler, else "cls". The matching tokenizer is
  `data.text.load_tokenizer(PATH)`.

  Returns (module, variables): `module.apply(variables, input_ids int32
  [B, L], attention_mask int32 [B, L])` gives "last_hidden_state" [B, L, H]
  and, with a pooler, "pooler_output" [B, H]. Raises
  hf_bert.PretrainedError (one line naming what was found) for a missing
  file, tensor or unsupported architecture.
  """
  fields = hf_bert.encoder_fields(hf_bert.read_config(path))
  weights = hf_bert.read_weights(path)
  has_pooler = "pooler.dense.weight" in weights
  pooling = pooling or ("pooler" if has_pooler else "cls")
  if pooling == "pooler" and not has_pooler:
    raise hf_bert.PretrainedError(f"{path} has no pooler weights; use "
                                  f"pooling 'mean' or 'cls'")
  module = TextEncoder(**fields, pooling=pooling, dtype=dtype)
  params = hf_bert.params_from_weights(weights, fields["layers"],
                                       fields["heads"], pooling == "pooler",
                                       path)
  _check_shapes(module, params, path)
  return module, {"params": jax.tree.map(jnp.asarray, params)}


def _check_shapes(module: TextEncoder, params: dict, where: str) -> None:
  ids = jnp.zeros((1, 2), jnp.int32)
  expected = jax.eval_shape(lambda: module.init(jax.random.key(0), ids,
                                                jnp.ones_like(ids)))["params"]
  bad = [f"{jax.tree_util.keystr(path)} {got.shape} vs {want.shape}"
         for (path, got), want in zip(
             jax.tree_util.tree_flatten_with_path(params)[0],
             jax.tree.leaves(expected)) if got.shape != want.shape]
  if jax.tree.structure(params) != jax.tree.structure(expected) or bad:
    raise hf_bert.PretrainedError(f"{where}: tensor shapes do not match its "
                                  f"config.json: {bad[:3]}")


def export_pretrained(module: TextEncoder, params: dict, path: str,
                      tokenizer=None) -> None:
  """Writes `params` (of `module`) as a transformers `BertModel` directory:
  config.json, model.safetensors and, given a `tokenizers.Tokenizer`, its
  tokenizer.json and vocab.txt. Without a pooler (pooling "mean"/"cls")
  transformers initialises `BertModel.pooler` itself."""
  from safetensors.numpy import save_file
  fields = {f: getattr(module, f) for f in (
      "vocab_size", "hidden", "layers", "heads", "mlp_dim", "max_len",
      "dropout", "type_vocab_size", "layer_norm_eps")}
  pooler = module.pooling == "pooler"
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, hf_bert.CONFIG_FILE), "w") as f:
    json.dump(hf_bert.hf_config(fields, pooler), f, indent=2)
  weights = hf_bert.weights_from_params(
      jax.tree.map(np.asarray, params), module.layers, pooler)
  save_file(weights, os.path.join(path, hf_bert.SAFETENSORS_FILE),
            metadata={"format": "pt"})
  if tokenizer is not None:
    tokenizer.save(os.path.join(path, "tokenizer.json"))
    vocab = tokenizer.get_vocab()
    with open(os.path.join(path, "vocab.txt"), "w") as f:
      f.writelines(f"{token}\n" for token in sorted(vocab, key=vocab.get))
