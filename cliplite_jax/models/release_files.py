"""Released CLIP and SigLIP models on local disk, read: which format, its
architecture (as a transformers CLIPConfig/SiglipConfig dict), tokenizer,
pixel statistics and, on demand, its weights by transformers' names.

Formats: a transformers `CLIPModel` / `SiglipModel` directory, an open_clip
Hub directory (open_clip_config.json and its weights), or a bare open_clip
checkpoint file with its model config (`openclip_map`). Nothing is
downloaded.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from cliplite_jax.models import hf_bert, openclip_map

# OpenAI CLIP's and SigLIP's pixel statistics, for sources without a
# preprocessor_config.json.
CLIP_PIXELS = ((0.48145466, 0.4578275, 0.40821073),
               (0.26862954, 0.26130258, 0.27577711))
SIGLIP_PIXELS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
# transformers' defaults, for config.json files that omit them.
_VISION_DEFAULTS = {
    "clip": dict(model_type="clip_vision_model", hidden_size=768,
                 intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, image_size=224, patch_size=32),
    "siglip": dict(model_type="siglip_vision_model", hidden_size=768,
                   intermediate_size=3072, num_hidden_layers=12,
                   num_attention_heads=12, image_size=224, patch_size=16)}
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


@dataclasses.dataclass(frozen=True)
class Source:
  """A released model, read (weights lazily).

  family: "clip" or "siglip". hf: its CLIPConfig/SiglipConfig dict
  (vision_config and text_config complete). weights: the file holding its
  tensors. openclip: whether those are open_clip names. tokenizer: its
  tokenizer.json (None if it has none). pixels: (mean, std).
  """
  path: str
  family: str
  hf: dict
  weights: str
  openclip: bool
  tokenizer: str | None
  pixels: tuple

  def tensors(self) -> dict[str, np.ndarray]:
    """Its weights, float32 numpy by transformers' `CLIPModel` /
    `SiglipModel` names."""
    tensors = hf_bert.read_tensors(self.weights)
    if self.openclip:
      tensors = openclip_map.hf_state_dict(tensors, self.hf, self.weights)
    return tensors


def _json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise hf_bert.PretrainedError(f"{path}: not a readable JSON file "
                                  f"({e})") from e


def _pixels(directory: str, family: str) -> tuple:
  path = os.path.join(directory, "preprocessor_config.json")
  if os.path.exists(path):
    pre = _json(path)
    if "image_mean" in pre and "image_std" in pre:
      return tuple(map(float, pre["image_mean"])), tuple(map(float,
                                                             pre["image_std"]))
  return CLIP_PIXELS if family == "clip" else SIGLIP_PIXELS


def read(path: str, arch: str = "") -> Source:
  """The released model at local `path` (see the module docstring); `arch`
  is the open_clip model config of a bare checkpoint file. PretrainedError
  (one line) for anything else."""
  if not os.path.exists(path):
    raise hf_bert.PretrainedError(f"{path} does not exist (released weights "
                                  f"are read from a local path)")
  if os.path.isfile(path):
    if not arch:
      raise hf_bert.PretrainedError(
          f"{path} is a file: an open_clip checkpoint needs its model config, "
          f"model.init_arch=NAME (e.g. ViT-B-32) or a JSON file")
    spec = openclip_map.model_config(arch)
    return Source(path, "clip", openclip_map.hf_config(
        spec.get("model_cfg", spec)), path, True, None, _openclip_pixels(spec))
  if os.path.exists(os.path.join(path, openclip_map.CONFIG_FILE)):
    spec = openclip_map.model_config(
        os.path.join(path, openclip_map.CONFIG_FILE))
    hf = openclip_map.hf_config(spec.get("model_cfg", spec))
    weights = _first(path, openclip_map.WEIGHT_FILES)
    return Source(path, "clip", hf, weights, True, _tokenizer_file(path),
                  _openclip_pixels(spec))
  config_path = os.path.join(path, "config.json")
  if not os.path.exists(config_path):
    raise hf_bert.PretrainedError(
        f"{path} has neither config.json (a transformers CLIPModel or "
        f"SiglipModel directory) nor {openclip_map.CONFIG_FILE} (open_clip)")
  hf = _json(config_path)
  family = hf.get("model_type")
  if family not in _VISION_DEFAULTS:
    raise hf_bert.PretrainedError(
        f"{config_path}: model_type {family!r} is neither a CLIP nor a SigLIP "
        f"model (architectures {hf.get('architectures')})")
  hf = dict(hf, vision_config={**_VISION_DEFAULTS[family],
                               **hf.get("vision_config", {})},
            text_config=dict(hf.get("text_config", {})))
  if family == "clip":
    hf.setdefault("projection_dim", 512)
  return Source(path, family, hf, _first(path, _HF_WEIGHTS), False,
                _tokenizer_file(path), _pixels(path, family))


def _openclip_pixels(spec: dict) -> tuple:
  """An open_clip config's preprocess_cfg mean/std, else OpenAI's."""
  pre = spec.get("preprocess_cfg", {})
  return (tuple(pre.get("mean", CLIP_PIXELS[0])),
          tuple(pre.get("std", CLIP_PIXELS[1])))


def _first(directory: str, names: tuple[str, ...]) -> str:
  for name in names:
    if os.path.exists(os.path.join(directory, name)):
      return os.path.join(directory, name)
  raise hf_bert.PretrainedError(f"{directory} has no weights: none of "
                                f"{', '.join(names)}")


def _tokenizer_file(directory: str) -> str | None:
  path = os.path.join(directory, "tokenizer.json")
  return path if os.path.exists(path) else None
