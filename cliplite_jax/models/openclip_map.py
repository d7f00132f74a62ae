"""open_clip checkpoints as Hugging Face CLIP checkpoints.

open_clip's `CLIP` (a ViT image tower and its own text transformer) holds
the same weights as transformers' `CLIPModel`, under other names and with
each attention's q, k, v in one `in_proj` tensor. This module renames and
splits them, and writes the CLIPConfig dict of an open_clip model config,
so that one mapping (`hf_vision`, `hf_text`, `released`) loads both. Pure
numpy (the files are read by `hf_bert.read_tensors`).
"""
from __future__ import annotations

import importlib.util
import json
import os
from typing import Any, Mapping

import numpy as np

from cliplite_jax.models import hf_bert

# Files of an open_clip directory on the Hugging Face Hub.
CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class OpenCLIPError(hf_bert.PretrainedError):
  """An open_clip checkpoint or model config that does not map; one line."""


def model_config(spec: str) -> dict:
  """An open_clip model config dict from a JSON file (a model config, or
  an open_clip_config.json: {"model_cfg", "preprocess_cfg"}, kept whole),
  or from the name of one that open_clip ships ("ViT-B-32", read from the
  installed package's model_configs/ without importing it).
  OpenCLIPError otherwise."""
  if os.path.isfile(spec):
    try:
      with open(spec) as f:
        config = json.load(f)
    except (OSError, ValueError) as e:
      raise OpenCLIPError(f"model config {spec}: not a readable JSON file "
                          f"({e})") from e
    if not isinstance(config, dict):
      raise OpenCLIPError(f"model config {spec}: not a JSON object")
    return config
  found = importlib.util.find_spec("open_clip")
  if found is None or not found.submodule_search_locations:
    raise OpenCLIPError(f"open_clip model config {spec!r}: not a file, and "
                        f"open_clip is not installed to name its configs; "
                        f"pass the JSON file")
  path = os.path.join(found.submodule_search_locations[0], "model_configs",
                      f"{spec}.json")
  if not os.path.exists(path):
    raise OpenCLIPError(f"open_clip has no model config {spec!r} (e.g. "
                        f"ViT-B-32-quickgelu, ViT-B-16); or pass a JSON file")
  with open(path) as f:
    return json.load(f)


def _unsupported(config: Mapping[str, Any]) -> str | None:
  vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
  if vision.get("timm_model_name"):
    return f"a timm image tower ({vision['timm_model_name']})"
  if text.get("hf_model_name"):
    return f"a Hugging Face text tower ({text['hf_model_name']})"
  for key, default in (("attentional_pool", False), ("no_ln_pre", False),
                       ("final_ln_after_pool", False)):
    if vision.get(key, default) != default:
      return f"vision_cfg.{key}={vision[key]!r}"
  if vision.get("pool_type", "tok") != "tok":
    return f"vision_cfg.pool_type={vision['pool_type']!r}"
  if text.get("pool_type", "argmax") not in ("argmax", "eos"):
    return f"text_cfg.pool_type={text['pool_type']!r}"
  for cfg, name in ((vision, "vision_cfg"), (text, "text_cfg")):
    if cfg.get("ls_init_value") is not None:
      return f"{name}.ls_init_value (LayerScale)"
  if text.get("proj_bias") or text.get("no_causal_mask"):
    return "a text tower with a projection bias or without a causal mask"
  return None


# The vision_config model_type of OpenAI's ResNet towers (ModifiedResNet),
# which transformers has no class for.
MODIFIED_RESNET = "clip_modified_resnet"


def hf_config(config: Mapping[str, Any]) -> dict:
  """The CLIPConfig dict (text_config, vision_config, projection_dim) of an
  open_clip model config of ViT (or OpenAI ResNet: a vision_config of
  model_type MODIFIED_RESNET) and text-transformer towers; OpenCLIPError
  naming what else it holds."""
  missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg")
             if k not in config]
  if missing:
    raise OpenCLIPError(f"not an open_clip model config: it has no "
                        f"{', '.join(missing)}")
  problem = _unsupported(config)
  if problem:
    raise OpenCLIPError(f"this open_clip model has {problem}; cliplite_jax "
                        f"loads ViT and OpenAI ResNet image towers with "
                        f"open_clip's own text transformer")
  vision, text = config["vision_cfg"], config["text_cfg"]
  act = "quick_gelu" if config.get("quick_gelu") else "gelu"
  width = vision["width"]
  text_width = text.get("width", 512)
  if isinstance(vision.get("layers"), (list, tuple)):
    vision_config = {
        "model_type": MODIFIED_RESNET, "layers": list(vision["layers"]),
        "width": width, "heads": width * 32 // vision.get("head_width", 64),
        "output_dim": config["embed_dim"],
        "image_size": vision["image_size"]}
  else:
    vision_config = {
        "model_type": "clip_vision_model", "hidden_size": width,
        "num_hidden_layers": vision["layers"],
        "num_attention_heads": width // vision.get("head_width", 64),
        "intermediate_size": int(width * vision.get("mlp_ratio", 4.0)),
        "patch_size": vision["patch_size"],
        "image_size": vision["image_size"], "hidden_act": act,
        "layer_norm_eps": 1e-5}
  return {
      "model_type": "clip", "projection_dim": config["embed_dim"],
      "vision_config": vision_config,
      "text_config": {
          "model_type": "clip_text_model",
          "vocab_size": text.get("vocab_size", 49408),
          "hidden_size": text_width,
          "num_hidden_layers": text.get("layers", 12),
          "num_attention_heads": text.get("heads", 8),
          "intermediate_size": int(text_width * text.get("mlp_ratio", 4.0)),
          "max_position_embeddings": text.get("context_length", 77),
          "hidden_act": act, "layer_norm_eps": 1e-5},
  }


def _split_attention(out: dict, hf: str, weight: np.ndarray,
                     bias: np.ndarray) -> None:
  for proj, w, b in zip("qkv", np.split(weight, 3), np.split(bias, 3)):
    out[f"{hf}self_attn.{proj}_proj.weight"] = w
    out[f"{hf}self_attn.{proj}_proj.bias"] = b


def _blocks(tensors: Mapping, ours: str, hf: str, layers: int,
            out: dict) -> None:
  for i in range(layers):
    src, dst = f"{ours}transformer.resblocks.{i}.", f"{hf}encoder.layers.{i}."
    _split_attention(out, dst, tensors[src + "attn.in_proj_weight"],
                     tensors[src + "attn.in_proj_bias"])
    for a, b in (("attn.out_proj", "self_attn.out_proj"),
                 ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                 ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
      out[f"{dst}{b}.weight"] = tensors[f"{src}{a}.weight"]
      out[f"{dst}{b}.bias"] = tensors[f"{src}{a}.bias"]


def hf_state_dict(tensors: Mapping[str, np.ndarray],
                  config: Mapping[str, Any], where: str) -> dict:
  """A transformers `CLIPModel` state dict (numpy, HF names and layouts)
  from an open_clip `CLIP` state dict and its `hf_config`; an OpenAI ResNet
  tower's "visual.*" tensors are kept under their own names
  (`modified_resnet.openclip_variables` reads them). OpenCLIPError naming
  missing tensors."""
  vision, text = config["vision_config"], config["text_config"]
  try:
    out = {
        "text_model.embeddings.token_embedding.weight":
            tensors["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight":
            tensors["positional_embedding"],
        "text_model.final_layer_norm.weight": tensors["ln_final.weight"],
        "text_model.final_layer_norm.bias": tensors["ln_final.bias"],
        # open_clip multiplies x @ proj; HF's Linear holds proj.T.
        "text_projection.weight": tensors["text_projection"].T,
        "logit_scale": tensors["logit_scale"].reshape(()),
    }
    _blocks(tensors, "", "text_model.", text["num_hidden_layers"], out)
    if vision["model_type"] == MODIFIED_RESNET:
      out.update({k: v for k, v in tensors.items()
                  if k.startswith("visual.")})
      return out
    out.update({
        "vision_model.embeddings.class_embedding":
            tensors["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight":
            tensors["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight":
            tensors["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": tensors["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": tensors["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": tensors["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": tensors["visual.ln_post.bias"],
        "visual_projection.weight": tensors["visual.proj"].T,
    })
    _blocks(tensors, "visual.", "vision_model.", vision["num_hidden_layers"],
            out)
  except KeyError as e:
    raise OpenCLIPError(f"{where} is not an open_clip CLIP of this model "
                        f"config: it has no tensor {e.args[0]!r} (it has e.g. "
                        f"{sorted(tensors)[:3]})") from e
  return out
