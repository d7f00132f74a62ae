"""Hugging Face CLIP / SigLIP text towers ↔ our `CLIPTextTransformer` params.

Maps the state dicts of transformers' `CLIPTextModel` and `SiglipTextModel`
(also the text half of a `CLIPModel` / `SiglipModel`, "text_model." prefix)
onto `clip_text.CLIPTextTransformer`'s parameter tree and back, and reads the
constructor fields from their config dicts. Pure numpy both ways: torch
tensors are accepted (converted through `.numpy()`), torch is not imported.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from cliplite_jax.models import activations, hf_bert

PREFIX = "text_model."
# The defaults of transformers' CLIPTextConfig / SiglipTextConfig, for
# config.json files that list only the fields that differ.
_CLIP_DEFAULTS = dict(
    vocab_size=49408, hidden_size=512, intermediate_size=2048,
    num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
    hidden_act="quick_gelu", layer_norm_eps=1e-5, attention_dropout=0.0)
_SIGLIP_DEFAULTS = dict(
    vocab_size=32000, hidden_size=768, intermediate_size=3072,
    num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=64,
    hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, attention_dropout=0.0)


# How each family's text tower pools and attends, as transformers has it.
SEMANTICS = {"clip": dict(pooling="eot", causal=True, mask_padding=True),
             "siglip": dict(pooling="last", causal=False, mask_padding=False)}


class UnsupportedTextModel(hf_bert.PretrainedError):
  """A config our text transformer does not implement (model type or
  activation); a ValueError, with one line naming what was found."""


def _text_config(hf: Mapping[str, Any], family: str, text_types: tuple,
                 full_types: tuple) -> dict:
  """The text part of a text-model or two-tower config dict, checked."""
  model_type = hf.get("model_type")
  if model_type in full_types:
    hf = hf.get("text_config") or hf.get("text_config_dict") or {}
  elif model_type not in text_types:
    raise UnsupportedTextModel(
        f"model_type {model_type!r} (architectures {hf.get('architectures')})"
        f" is not a {family} text model; expected one of "
        f"{text_types + full_types}")
  return dict(hf)


def _fields(hf: dict, defaults: dict) -> dict:
  c = {**defaults, **{k: v for k, v in hf.items() if v is not None}}
  act = c["hidden_act"]
  if act not in activations.FROM_HF:
    raise UnsupportedTextModel(f"hidden_act {act!r} is not implemented; "
                               f"supported: {sorted(activations.FROM_HF)}")
  return dict(vocab_size=c["vocab_size"], width=c["hidden_size"],
              layers=c["num_hidden_layers"], heads=c["num_attention_heads"],
              mlp_dim=c["intermediate_size"],
              max_len=c["max_position_embeddings"], act=activations.FROM_HF[act],
              layer_norm_eps=c["layer_norm_eps"],
              dropout=c["attention_dropout"])


def clip_text_fields(hf: Mapping[str, Any]) -> dict:
  """`CLIPTextTransformer` fields of a CLIPTextConfig dict (model_type
  "clip_text_model") or of a CLIPConfig dict ("clip", its text_config).

  Pooling "eot" at the last real token: HF pools at the first
  `eos_token_id` (or, for legacy configs with eos_token_id 2, at
  argmax(input_ids)), the same token for right-padded captions that end
  with it, as CLIP's tokenizer writes them.
  """
  hf = _text_config(hf, "CLIP", ("clip_text_model",), ("clip",))
  return dict(_fields(hf, _CLIP_DEFAULTS), **SEMANTICS["clip"], projection=0)


def siglip_text_fields(hf: Mapping[str, Any]) -> dict:
  """`CLIPTextTransformer` fields of a SiglipTextConfig dict (model_type
  "siglip_text_model", also SigLIP 2's) or of a SiglipConfig dict.

  No attention mask at all (mask_padding False): HF's SigLIP tokenizer
  returns none, so SiglipTextModel attends to the padding, as SigLIP was
  trained.
  """
  hf = _text_config(hf, "SigLIP", ("siglip_text_model", "siglip2_text_model"),
                    ("siglip", "siglip2"))
  fields = _fields(hf, _SIGLIP_DEFAULTS)
  projection = hf.get("projection_size") or fields["width"]
  return dict(fields, **SEMANTICS["siglip"], projection=projection)


def name_map(layers: int, head: bool) -> dict[str, tuple[str, ...]]:
  """Every HF tensor name (no prefix) of a text tower → our parameter path."""
  names = {
      "embeddings.token_embedding.weight": ("token_embedding", "embedding"),
      "embeddings.position_embedding.weight": ("position_embedding",
                                               "embedding"),
      "final_layer_norm.weight": ("final_layer_norm", "scale"),
      "final_layer_norm.bias": ("final_layer_norm", "bias"),
  }
  for i in range(layers):
    hf, ours = f"encoder.layers.{i}.", f"layer_{i}"
    for torch_name, flax_name in (("q_proj", "query"), ("k_proj", "key"),
                                  ("v_proj", "value"), ("out_proj", "out")):
      names[f"{hf}self_attn.{torch_name}.weight"] = (ours, "self_attn",
                                                     flax_name, "kernel")
      names[f"{hf}self_attn.{torch_name}.bias"] = (ours, "self_attn",
                                                   flax_name, "bias")
    for norm in ("layer_norm1", "layer_norm2"):
      names[f"{hf}{norm}.weight"] = (ours, norm, "scale")
      names[f"{hf}{norm}.bias"] = (ours, norm, "bias")
    for fc in ("fc1", "fc2"):
      names[f"{hf}mlp.{fc}.weight"] = (ours, fc, "kernel")
      names[f"{hf}mlp.{fc}.bias"] = (ours, fc, "bias")
  if head:
    names.update({"head.weight": ("head", "kernel"),
                  "head.bias": ("head", "bias")})
  return names


def to_flax(name: str, value: np.ndarray, heads: int) -> np.ndarray:
  """An HF tensor in our layout: torch Linear [out, in] → kernel [in, out];
  q/k/v kernels [in, heads, head_dim], biases [heads, head_dim]; out kernel
  [heads, head_dim, out] (flax's MultiHeadDotProductAttention)."""
  if any(f"{p}_proj." in name for p in "qkv"):
    if name.endswith("weight"):
      return value.T.reshape(value.shape[1], heads, -1)
    return value.reshape(heads, -1)
  if name.endswith("out_proj.weight"):
    return value.T.reshape(heads, -1, value.shape[0])
  if name.endswith("weight") and (".fc" in name or name.startswith("head.")):
    return value.T
  return value


def to_torch_layout(name: str, value: np.ndarray) -> np.ndarray:
  """Inverse of `to_flax`."""
  if any(f"{p}_proj." in name for p in "qkv"):
    if name.endswith("weight"):
      return value.reshape(value.shape[0], -1).T
    return value.reshape(-1)
  if name.endswith("out_proj.weight"):
    return value.reshape(-1, value.shape[-1]).T
  if name.endswith("weight") and (".fc" in name or name.startswith("head.")):
    return value.T
  return value


def _numpy(value) -> np.ndarray:
  """float32 numpy from numpy or a torch tensor (bfloat16 included)."""
  if hasattr(value, "detach"):
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, np.float32)


def _params(state_dict: Mapping[str, Any], layers: int, heads: int,
            head: bool, where: str) -> dict:
  has_prefix = any(k.startswith(PREFIX) for k in state_dict)
  # Without the prefix, take every key; with it, only the text model's
  # (a two-tower state dict also holds vision_model.*, logit_scale, ...).
  weights = {k.removeprefix(PREFIX): v for k, v in state_dict.items()
             if not has_prefix or k.startswith(PREFIX)}
  names = name_map(layers, head)
  missing = sorted(set(names) - set(weights))
  if missing:
    raise hf_bert.PretrainedError(
        f"{where} lacks {len(missing)} tensors, e.g. {missing[:3]} "
        f"(it has e.g. {sorted(weights)[:3]})")
  params = {}
  for name, path in names.items():
    hf_bert.tree_set(params, path, to_flax(name, _numpy(weights[name]), heads))
  return params


def _state_dict(params: Mapping, layers: int, head: bool,
                prefix: str) -> dict[str, np.ndarray]:
  out = {}
  for name, path in name_map(layers, head).items():
    value = np.asarray(hf_bert.tree_get(params, path), np.float32)
    # Fresh writable arrays (torch.from_numpy warns on read-only ones).
    out[prefix + name] = np.array(to_torch_layout(name, value), order="C")
  return out


def clip_text_params(state_dict: Mapping[str, Any], num_layers: int,
                     num_heads: int, where: str = "state dict") -> dict:
  """Our params (nested dict of float32 numpy) from a `CLIPTextModel` (or
  `CLIPModel`, "text_model." prefix) state dict. Other tensors (vision
  tower, text_projection, logit_scale) are ignored; a missing one is a
  hf_bert.PretrainedError naming it."""
  return _params(state_dict, num_layers, num_heads, False, where)


def siglip_text_params(state_dict: Mapping[str, Any], num_layers: int,
                       num_heads: int, where: str = "state dict") -> dict:
  """As `clip_text_params`, for `SiglipTextModel` / `SiglipModel` (with the
  `head` Dense)."""
  return _params(state_dict, num_layers, num_heads, True, where)


def to_clip_text_state_dict(params: Mapping, num_layers: int,
                            prefix: str = "") -> dict[str, np.ndarray]:
  """HF `CLIPTextModel` tensors (torch layout, float32 numpy) from our
  params; prefix "text_model." names them as inside a `CLIPModel`."""
  return _state_dict(params, num_layers, False, prefix)


def to_siglip_text_state_dict(params: Mapping, num_layers: int,
                              prefix: str = "") -> dict[str, np.ndarray]:
  """HF `SiglipTextModel` tensors from our params (see
  `to_clip_text_state_dict`)."""
  return _state_dict(params, num_layers, True, prefix)
