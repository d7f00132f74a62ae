"""Hugging Face BERT checkpoints ↔ our Flax `TextEncoder` parameters.

Reads and writes the files transformers uses for `BertModel` (config.json,
model.safetensors or pytorch_model.bin), with BERT's parameter names, so
BERT-base, MiniLM and any checkpoint of the same architecture load. The
mapping is a pure function of numpy arrays both ways.
"""
from __future__ import annotations

import json
import os

import numpy as np

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
TORCH_FILE = "pytorch_model.bin"


class PretrainedError(ValueError):
  """A checkpoint directory that cannot be loaded, and why."""


def read_config(path: str) -> dict:
  """PATH/config.json of a BERT-architecture checkpoint, checked.

  Raises PretrainedError naming what was found for a missing file or an
  architecture our encoder does not implement.
  """
  config_path = os.path.join(path, CONFIG_FILE)
  if not os.path.isdir(path):
    raise PretrainedError(f"{path} is not a directory")
  if not os.path.exists(config_path):
    raise PretrainedError(f"{path} has no {CONFIG_FILE} "
                          f"(found: {sorted(os.listdir(path))})")
  with open(config_path) as f:
    hf = json.load(f)
  model_type = hf.get("model_type")
  if model_type != "bert":
    raise PretrainedError(
        f"{config_path}: model_type {model_type!r} "
        f"(architectures {hf.get('architectures')}) is not BERT; only "
        f"BERT-architecture checkpoints (BERT, MiniLM, ...) load")
  for key, wanted in (("hidden_act", "gelu"),
                      ("position_embedding_type", "absolute")):
    if hf.get(key, wanted) != wanted:
      raise PretrainedError(f"{config_path}: {key}={hf[key]!r}; the encoder "
                            f"implements {key}={wanted!r} only")
  return hf


def encoder_fields(hf: dict) -> dict:
  """`TextEncoder` constructor fields from a BERT config.json dict."""
  return dict(vocab_size=hf["vocab_size"], hidden=hf["hidden_size"],
              layers=hf["num_hidden_layers"], heads=hf["num_attention_heads"],
              mlp_dim=hf["intermediate_size"],
              max_len=hf["max_position_embeddings"],
              type_vocab_size=hf.get("type_vocab_size", 2),
              layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
              dropout=hf.get("hidden_dropout_prob", 0.1))


def read_tensors(path: str) -> dict[str, np.ndarray]:
  """A weights file's tensors as float32 numpy: .safetensors (bfloat16
  included), or a torch pickle (.bin/.pt/.pth; a training checkpoint's
  "state_dict" and its "module." prefix unwrapped). PretrainedError (one
  line) when it cannot be read."""
  if path.endswith(".safetensors"):
    # safetensors' numpy reader has no bfloat16; its flax one has.
    from safetensors.flax import load_file
    try:
      tensors = load_file(path)
    except Exception as e:  # safetensors raises its own kinds
      raise PretrainedError(f"{path}: not a readable safetensors file "
                            f"({e})") from e
  else:
    try:
      import torch
    except ImportError as e:
      raise PretrainedError(
          f"{path} needs PyTorch to read; install torch or save the "
          f"checkpoint as .safetensors") from e
    try:
      tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a bad file
      if "TorchScript" in str(e):
        raise PretrainedError(
            f"{path} is a TorchScript archive (OpenAI's original .pt "
            f"release), which is not read: use the same weights as a state "
            f"dict, e.g. the Hub's open_clip_pytorch_model.bin, or save "
            f"torch.jit.load(PATH).state_dict()") from e
      raise PretrainedError(f"{path}: not a readable torch checkpoint "
                            f"({str(e).splitlines()[0]})") from e
    if isinstance(tensors, dict) and "state_dict" in tensors:
      tensors = tensors["state_dict"]
    if not isinstance(tensors, dict):
      raise PretrainedError(f"{path} holds a {type(tensors).__name__}, not "
                            f"a state dict")
    tensors = {k: v.float().numpy() for k, v in tensors.items()
               if hasattr(v, "float")}
  if tensors and all(k.startswith("module.") for k in tensors):
    tensors = {k[len("module."):]: v for k, v in tensors.items()}
  return {k: np.asarray(v, np.float32) for k, v in tensors.items()}


def read_weights(path: str) -> dict[str, np.ndarray]:
  """The checkpoint's tensors by BERT name (a "bert." prefix removed)."""
  safetensors_path = os.path.join(path, SAFETENSORS_FILE)
  torch_path = os.path.join(path, TORCH_FILE)
  if os.path.exists(safetensors_path):
    tensors = read_tensors(safetensors_path)
  elif os.path.exists(torch_path):
    tensors = read_tensors(torch_path)
  else:
    raise PretrainedError(f"{path} has neither {SAFETENSORS_FILE} nor "
                          f"{TORCH_FILE} (found: {sorted(os.listdir(path))})")
  out = {}
  for name, value in tensors.items():
    name = name.removeprefix("bert.")
    # Checkpoints from TF-era BERT name LayerNorm parameters gamma/beta.
    name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
        "LayerNorm.beta", "LayerNorm.bias")
    out[name] = np.asarray(value, np.float32)
  return out


def _layer_map(i: int) -> dict[str, tuple[str, ...]]:
  """BERT name → our parameter path, for transformer layer i."""
  hf, ours = f"encoder.layer.{i}.", f"layer_{i}"
  return {
      **{f"{hf}attention.self.{n}.{p}": (ours, "attention", n, q)
         for n in ("query", "key", "value")
         for p, q in (("weight", "kernel"), ("bias", "bias"))},
      f"{hf}attention.output.dense.weight": (ours, "attention", "out", "kernel"),
      f"{hf}attention.output.dense.bias": (ours, "attention", "out", "bias"),
      f"{hf}attention.output.LayerNorm.weight": (ours, "attention_norm", "scale"),
      f"{hf}attention.output.LayerNorm.bias": (ours, "attention_norm", "bias"),
      f"{hf}intermediate.dense.weight": (ours, "intermediate", "kernel"),
      f"{hf}intermediate.dense.bias": (ours, "intermediate", "bias"),
      f"{hf}output.dense.weight": (ours, "output", "kernel"),
      f"{hf}output.dense.bias": (ours, "output", "bias"),
      f"{hf}output.LayerNorm.weight": (ours, "output_norm", "scale"),
      f"{hf}output.LayerNorm.bias": (ours, "output_norm", "bias"),
  }


def name_map(layers: int, pooler: bool) -> dict[str, tuple[str, ...]]:
  """Every BERT tensor name of an encoder → our parameter path."""
  names = {
      "embeddings.word_embeddings.weight": ("word_embeddings", "embedding"),
      "embeddings.position_embeddings.weight": ("position_embeddings",
                                                "embedding"),
      "embeddings.token_type_embeddings.weight": ("token_type_embeddings",
                                                  "embedding"),
      "embeddings.LayerNorm.weight": ("embeddings_norm", "scale"),
      "embeddings.LayerNorm.bias": ("embeddings_norm", "bias"),
  }
  for i in range(layers):
    names.update(_layer_map(i))
  if pooler:
    names.update({"pooler.dense.weight": ("pooler", "kernel"),
                  "pooler.dense.bias": ("pooler", "bias")})
  return names


def to_flax(name: str, value: np.ndarray, heads: int) -> np.ndarray:
  """A BERT tensor in our layout: torch Linear [out, in] → kernel [in, out];
  attention projections split into heads."""
  if "attention.self" in name:
    hidden = value.shape[0]
    if name.endswith("weight"):
      return value.T.reshape(hidden, heads, hidden // heads)
    return value.reshape(heads, hidden // heads)
  if "attention.output.dense.weight" in name:
    hidden = value.shape[0]
    return value.T.reshape(heads, hidden // heads, hidden)
  if name.endswith("dense.weight"):
    return value.T
  return value


def to_torch_layout(name: str, value: np.ndarray) -> np.ndarray:
  """Inverse of `to_flax`."""
  value = np.asarray(value, np.float32)
  if "attention.self" in name:
    if name.endswith("weight"):
      return value.reshape(value.shape[0], -1).T
    return value.reshape(-1)
  if "attention.output.dense.weight" in name:
    return value.reshape(-1, value.shape[-1]).T
  if name.endswith("dense.weight"):
    return value.T
  return value


def tree_get(tree: dict, path: tuple[str, ...]):
  """tree[path[0]][path[1]]…: the leaf (or subtree) at `path`."""
  for key in path:
    tree = tree[key]
  return tree


def tree_set(tree: dict, path: tuple[str, ...], value) -> None:
  """Puts `value` at `path` in the nested dict `tree`, making the dicts on
  the way."""
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def params_from_weights(weights: dict[str, np.ndarray], layers: int,
                        heads: int, pooler: bool, where: str) -> dict:
  """Our `TextEncoder` params (float32 numpy) from BERT tensors; a missing
  tensor is a PretrainedError naming it."""
  names = name_map(layers, pooler)
  missing = sorted(set(names) - set(weights))
  if missing:
    raise PretrainedError(f"{where} lacks {len(missing)} BERT tensors, e.g. "
                          f"{missing[:3]} (it has e.g. "
                          f"{sorted(weights)[:3]})")
  params = {}
  for name, path in names.items():
    tree_set(params, path, to_flax(name, weights[name], heads))
  return params


def weights_from_params(params: dict, layers: int,
                        pooler: bool) -> dict[str, np.ndarray]:
  """BERT tensors (torch layout, float32) from our `TextEncoder` params."""
  return {name: np.ascontiguousarray(to_torch_layout(name,
                                                     tree_get(params, path)))
          for name, path in name_map(layers, pooler).items()}


def hf_config(fields: dict, pooler: bool) -> dict:
  """A transformers `BertConfig` dict for an encoder with these fields."""
  del pooler  # BertModel always builds a pooler; without one it is random
  return {
      "architectures": ["BertModel"], "model_type": "bert",
      "vocab_size": fields["vocab_size"], "hidden_size": fields["hidden"],
      "num_hidden_layers": fields["layers"],
      "num_attention_heads": fields["heads"],
      "intermediate_size": fields["mlp_dim"], "hidden_act": "gelu",
      "hidden_dropout_prob": fields["dropout"],
      "attention_probs_dropout_prob": fields["dropout"],
      "max_position_embeddings": fields["max_len"],
      "type_vocab_size": fields["type_vocab_size"],
      "initializer_range": 0.02, "layer_norm_eps": fields["layer_norm_eps"],
      "pad_token_id": 0, "position_embedding_type": "absolute",
  }
