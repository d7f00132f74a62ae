"""Released CLIP and SigLIP models, from a local path into a run.

A source (`release_files`, which reads it) is a Hugging Face `CLIPModel` /
`SiglipModel` directory, an open_clip Hub directory or a bare open_clip
checkpoint file with its model config (`model.init_arch`: a name open_clip
ships, or a JSON file). Nothing is downloaded.

`model.init_from` takes both towers, the logit scale and SigLIP's bias from
one source; `model.image.init_from` / `model.text.init_from` take one tower.
`adopt` writes the source's architecture, tokenizer and pixel statistics
into the config before anything is built (so the saved config describes the
model that is trained); `initial_variables` reads the weights at
initialisation. Image towers: ViTs (CLIP's, SigLIP's, open_clip's) and
OpenAI's ResNets (open_clip's RN50, RN101, …: `modified_resnet`). With
`model.head = "released"` the heads are the released ones (CLIP's
projections; SigLIP has none), so the model *is* the released model; by
default CLIP-Lite's heads start fresh.
"""
from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np

from cliplite_jax import config_io
from cliplite_jax.data import text as text_lib
from cliplite_jax.models import (hf_bert, hf_text, hf_vision, modified_resnet,
                                 openclip_map, towers, vit)
from cliplite_jax.models.release_files import Source, read


# --- the config ---

def native_size(source: Source) -> int:
  """The resolution the source's image tower was trained at."""
  return source.hf["vision_config"]["image_size"]


def image_section(source: Source, old) -> dict:
  """The `model.image` section of the source's vision tower; `old`'s
  locked, scan and init_from carry over."""
  vision = source.hf["vision_config"]
  if vision["model_type"] == openclip_map.MODIFIED_RESNET:
    return dict(name="clip_resnet", layers=tuple(vision["layers"]),
                width=vision["width"], heads=vision["heads"],
                output_dim=vision["output_dim"],
                grid=vision["image_size"] // 32,
                locked=bool(old.get("locked", False)),
                init_from=old.get("init_from", ""))
  f = hf_vision.vit_fields_from_hf_config(vision)
  shape = (f["width"], f["depth"], f["heads"], f["mlp_dim"])
  size = next((name for name, value in vit.VARIANTS.items()
               if value == shape), "B")  # "B" with every field overridden
  return dict(
      name="vit", variant=f"{size}/{f['patch']}", width=f["width"],
      depth=f["depth"], heads=f["heads"], mlp_dim=f["mlp_dim"],
      pool=f["pool"], posemb=f["posemb"], class_token=f["class_token"],
      pre_norm=f["pre_norm"], act=f["act"],
      layer_norm_eps=f["layer_norm_eps"], posemb_grid=f["posemb_grid"],
      scan=bool(old.get("scan", False)) if old.get("name") == "vit" else False,
      locked=bool(old.get("locked", False)),
      init_from=old.get("init_from", ""))


def text_section(source: Source, old) -> dict:
  """The `model.text` section of the source's text tower; `old`'s locked,
  dropout, train_last_layers and init_from carry over."""
  fields = (hf_text.clip_text_fields if source.family == "clip"
            else hf_text.siglip_text_fields)(source.hf["text_config"])
  return dict(
      name=source.family, vocab_size=fields["vocab_size"],
      hidden=fields["width"], layers=fields["layers"], heads=fields["heads"],
      mlp_dim=fields["mlp_dim"], max_len=fields["max_len"],
      pooling=fields["pooling"], causal=fields["causal"],
      mask_padding=fields["mask_padding"], act=fields["act"],
      layer_norm_eps=fields["layer_norm_eps"],
      projection=fields["projection"],
      dropout=float(old.get("dropout", 0.0)),
      train_last_layers=int(old.get("train_last_layers", -1)),
      locked=bool(old.get("locked", False)),
      init_from=old.get("init_from", ""))


def sources_of(config: ml_collections.ConfigDict) -> dict[str, str]:
  """{"image"/"text": path} of the towers the config loads (a tower's own
  `init_from` before `model.init_from`)."""
  m = config.model
  whole = m.get("init_from", "")
  out = {}
  for tower in ("image", "text"):
    path = (m.get(tower) or {}).get("init_from", "") or whole
    if path:
      out[tower] = path
  return out


def adopt(config: ml_collections.ConfigDict) -> list[str]:
  """Writes the released towers' architecture into `config` (in place):
  their `model.image`/`model.text` sections; the text tower's tokenizer and
  length (`data.tokenizer`, `data.max_tokens`); the image tower's pixel
  statistics (`model.pixel_mean/std`) and, when `data.image_size` is 0, its
  resolution; for `model.head = "released"`, the released heads and width.
  Returns one line per tower adopted. UserError for an unusable source."""
  m = config.model
  wanted = sources_of(config)
  if m.get("head") == "released" and not m.get("init_from"):
    raise config_io.UserError(
        "model.head='released' takes the heads of model.init_from, which is "
        "unset; name a released model, or use model.head='milinear'")
  arch = m.get("init_arch", "")
  lines = []
  read_sources = {}
  for tower, path in wanted.items():
    try:
      source = read_sources.get(path) or read(path, arch)
    except hf_bert.PretrainedError as e:
      key = "model.init_from" if path == m.get("init_from") else (
          f"model.{tower}.init_from")
      raise config_io.UserError(f"{key}: {e}") from e
    read_sources[path] = source
    if tower == "image":
      m.image = image_section(source, m.image)
      m.pixel_mean, m.pixel_std = source.pixels
      native = native_size(source)
      if config.data.image_size == 0:
        config.data.image_size = native
      lines.append(f"image tower from {path}: "
                   f"{towers.image_tower(m.image).describe(m.image)}, "
                   f"{native} px"
                   + ("" if config.data.image_size == native else
                      f" (run at {config.data.image_size} px: position "
                      f"embeddings resized)"))
    else:
      tokenizer = source.tokenizer or _named_tokenizer(config)
      if tokenizer is None:
        raise config_io.UserError(
            f"{path} has no tokenizer.json for its text tower: name the "
            f"tokenizer it was trained with (configs/released.py:tokenizer="
            f"PATH, or data.tokenizer=PATH; an open_clip CLIP's is OpenAI "
            f"CLIP's tokenizer.json), or load only the image tower with "
            f"model.image.init_from")
      m.text = text_section(source, m.text)
      config.data.tokenizer = tokenizer
      config.data.max_tokens = m.text.max_len
      padding = ""
      if not m.text.mask_padding:
        padding = f", padded with {_pad_token(tokenizer, m.text.max_len, path)!r}"
      lines.append(f"text tower from {path}: {source.family} "
                   f"{m.text.layers}×{m.text.hidden}, {m.text.max_len} "
                   f"tokens, tokenizer {tokenizer}{padding}")
  if m.get("head") == "released":
    if set(wanted.values()) != {m.init_from}:
      raise config_io.UserError(
          "model.head='released' puts model.init_from's heads on its own "
          "towers; with a tower from another model.*.init_from use "
          "model.head='milinear' (fresh heads)")
    source = read_sources[m.init_from]
    m.proj_dim = (source.hf["projection_dim"] if source.family == "clip"
                  else m.image.get("output_dim") or m.image.width)
    lines.append(f"heads: the released {source.family} "
                 f"{'projections' if source.family == 'clip' else '(none)'}"
                 f", width {m.proj_dim}")
  if m.get("init_from"):
    source = read_sources.get(m.init_from)
    if source is not None:
      lines.append(_scale_line(source, config.loss.name))
  return lines


# The objective a family's logit scale (and bias) was trained with.
NATIVE_OBJECTIVE = {"clip": "infonce", "siglip": "sigmoid"}


def loads_scale(family: str, objective: str) -> bool:
  """Whether a release's logit scale (and SigLIP's bias) is loaded for a
  run of `objective`: only under the objective it was trained with; JSD's
  softplus critic, unlike softmax, is not shift-invariant, and CLIP's
  scale 100 on cosines of 0.2–0.3 would start every negative far out."""
  return NATIVE_OBJECTIVE[family] == objective


def _scale_line(source: Source, objective: str) -> str:
  if loads_scale(source.family, objective):
    return (f"logit scale{' and bias' if source.family == 'siglip' else ''}"
            f": the release's")
  return (f"logit scale: model.init_temperature's, not the release's "
          f"(trained for {NATIVE_OBJECTIVE[source.family]}, this run is "
          f"{objective})")


def _pad_token(tokenizer: str, max_tokens: int, path: str) -> str:
  """The pad token of a released tokenizer whose text tower attends to its
  padding (SigLIP); UserError when it names none in its vocabulary."""
  try:
    loaded = text_lib.load_tokenizer(tokenizer, max_tokens)
  except (OSError, ValueError) as e:
    raise config_io.UserError(f"tokenizer {tokenizer}: {e}") from e
  pad = loaded.padding["pad_token"]
  if loaded.token_to_id(pad) is None:
    raise config_io.UserError(
        f"{path}'s text tower attends to its padding, but its tokenizer names "
        f"no pad token in its vocabulary (tokenizer_config.json pad_token, or "
        f"config.json text_config.pad_token_id)")
  return pad


def _named_tokenizer(config) -> str | None:
  """`data.tokenizer` when it names a file or directory (not a vocabulary
  to train)."""
  name = config.data.get("tokenizer", "")
  return name if name and os.path.exists(name) else None


# --- the weights ---

def initial_variables(config: ml_collections.ConfigDict,
                      has_bias: bool) -> dict[str, dict[str, Any]]:
  """{"params": {top-level name: float32 numpy tree}, "batch_stats": ...}
  read from the sources of an adopted `config`: image_encoder (with an
  OpenAI ResNet's BatchNorm statistics), text_encoder, and from
  `model.init_from` log_scale and logit_bias (when `has_bias`) under the
  objective they were trained for (`loads_scale`), and with
  `model.head="released"` image_head/text_head (CLIP's projections).
  PretrainedError naming a tensor that is missing."""
  from cliplite_jax.models import cliplite  # the tree's names
  m = config.model
  out, stats = {}, {}
  sources, tensors_read = {}, {}

  def source_of(path):
    if path not in sources:
      sources[path] = read(path, m.get("init_arch", ""))
    return sources[path]

  def tensors_of(path):
    if path not in tensors_read:
      tensors_read[path] = source_of(path).tensors()
    return tensors_read[path]

  wanted = sources_of(config)
  if "image" in wanted:
    source = source_of(wanted["image"])
    if m.image.name == "clip_resnet":
      try:
        variables = modified_resnet.openclip_variables(
            tensors_of(wanted["image"]), tuple(m.image.layers))
      except KeyError as e:
        raise hf_bert.PretrainedError(
            f"{source.weights} has no tensor {e.args[0]!r} of this OpenAI "
            f"ResNet") from e
      out[cliplite.IMAGE_TOWER] = variables["params"]
      stats[cliplite.IMAGE_TOWER] = variables["batch_stats"]
    else:
      params = (hf_vision.clip_vision_params if source.family == "clip"
                else hf_vision.siglip_vision_params)
      out[cliplite.IMAGE_TOWER] = params(tensors_of(wanted["image"]),
                                         m.image.depth,
                                         scan=m.image.get("scan", False))
  if "text" in wanted:
    params = (hf_text.clip_text_params if m.text.name == "clip"
              else hf_text.siglip_text_params)
    out[cliplite.TEXT_TOWER] = params(tensors_of(wanted["text"]),
                                      m.text.layers, m.text.heads,
                                      wanted["text"])
  if m.get("init_from"):
    tensors = tensors_of(m.init_from)
    family = source_of(m.init_from).family
    if loads_scale(family, config.loss.name):
      if "logit_scale" in tensors:
        out["log_scale"] = tensors["logit_scale"].reshape(())
      if has_bias and "logit_bias" in tensors:
        out["logit_bias"] = tensors["logit_bias"].reshape(())
    if m.get("head") == "released" and family == "clip":
      # An OpenAI ResNet projects inside its attention pool: the image
      # head is the identity (exact in float32).
      image_kernel = (np.eye(m.proj_dim, dtype=np.float32)
                      if m.image.name == "clip_resnet"
                      else tensors["visual_projection.weight"].T)
      out["image_head"] = {"Dense_0": {"kernel": image_kernel}}
      out["text_head"] = {"Dense_0": {
          "kernel": tensors["text_projection.weight"].T}}
  return {"params": out, "batch_stats": stats}
