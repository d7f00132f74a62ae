"""Every image and text tower, found by `model.image.name` / `model.text.name`.

A row says how to build the tower from its config fields, which fields it
has and their domains, how the run summary names it, and which exports it
offers. The model,
validation, the summary, the optimiser and the exports read these tables and
never branch on a tower's name; a new tower is a module in `models/` and a
row here.

Every tower also takes `locked` (LiT: the tower runs in inference mode, gets
no gradient, no update, no weight decay and no optimiser state). Configs
saved before towers had names are "resnet" and "bert". The ViT, OpenAI
CLIP ResNet ("clip_resnet"), CLIP and SigLIP towers take `init_from`: a
released model to start from (`models/released`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import ml_collections

from cliplite_jax.models import (activations, clip_text, modified_resnet,
                                 resnet, text, vit)

DEFAULT_IMAGE, DEFAULT_TEXT = "resnet", "bert"


@dataclasses.dataclass(frozen=True)
class Tower:
  """One tower kind.

  build: (its fields, compute dtype, remat) → a flax module. Image towers
    map float [B, H, W, 3] to float32 [B, num_features]; text towers map
    int32 ids and mask [B, L] to a dict with "features" float32 [B, F].
  fields: its config fields besides `name` and `locked`.
  check: (validation's checker, "model.image" or "model.text") → None;
    appends a line per out-of-domain field.
  relations: the same for relations between fields (heads dividing the
    width, ...), checked once every field is in its domain.
  describe: its fields → how the run summary names it ("ViT-Ti/8").
  torch_export: params, batch_stats, fields, step → a PyTorch state_dict of
    the image tower (None: `export_image` says it has none).
  hf_export: module, params, out, tokenizer → writes the text tower as a
    transformers directory (None: `export_text` says it has none).
  """
  build: Callable[[Any, Any, bool], nn.Module]
  fields: tuple[str, ...]
  check: Callable[[Any, str], None]
  relations: Callable[[Any, str], None]
  describe: Callable[[Any], str]
  torch_export: Callable[..., dict] | None = None
  hf_export: Callable[..., None] | None = None


def name_of(fields, default: str) -> str:
  """The tower name in a `model.image` / `model.text` section."""
  return fields.get("name", default) if fields is not None else default


def image_tower(fields) -> Tower:
  """The IMAGE_TOWERS row of a `model.image` section."""
  return IMAGE_TOWERS[name_of(fields, DEFAULT_IMAGE)]


def text_tower(fields) -> Tower:
  """The TEXT_TOWERS row of a `model.text` section."""
  return TEXT_TOWERS[name_of(fields, DEFAULT_TEXT)]


# --- ResNet ---

def _build_resnet(f, dtype, remat):
  return resnet.ResNet(depth=f.depth, width=f.width, dtype=dtype, remat=remat,
                       im2col=f.get("im2col", False))


def _no_relations(c, key):
  del c, key


def _check_resnet(c, key):
  c.one_of(f"{key}.depth", tuple(resnet.LAYOUTS))
  c.number(f"{key}.width", 0, float("inf"), low_open=True, high_open=True)


def _resnet_export(params, stats, f, step):
  from cliplite_jax.models import torch_layout
  return torch_layout.resnet_state_dict(params, stats, f.depth,
                                        batches_seen=step)


def _describe_resnet(f):
  return f"ResNet-{f.depth}" + (f" ×{f.width:g}" if f.width != 1 else "")


# --- ViT ---

def vit_shape(f) -> dict[str, int]:
  """width, depth, heads, mlp_dim, patch of a `model.image` ViT section:
  its `variant`'s, each overridden by a field > 0."""
  shape = vit.parse_variant(f.variant)
  for k in ("width", "depth", "heads", "mlp_dim"):
    value = f.get(k, 0)
    if isinstance(value, int) and value > 0:  # validation names the others
      shape[k] = value
  return shape


def _build_vit(f, dtype, remat):
  return vit.ViT(**vit_shape(f), pool=f.pool, posemb=f.posemb,
                 class_token=f.class_token, pre_norm=f.pre_norm, act=f.act,
                 layer_norm_eps=f.layer_norm_eps, dtype=dtype, remat=remat,
                 scan=f.scan, posemb_grid=f.get("posemb_grid", 0) or None)


def _check_vit(c, key):
  try:
    vit_shape(c.get(key))
  except ValueError as e:
    c.problems.append(f"{key}.variant: {e}")
  for k in ("width", "depth", "heads", "mlp_dim"):
    c.integer(f"{key}.{k}", 0, "an integer ≥ 0 (0: the variant's)")
  c.one_of(f"{key}.pool", vit.POOLS)
  c.one_of(f"{key}.posemb", vit.POSEMBS)
  c.one_of(f"{key}.act", tuple(activations.ACTIVATIONS))
  c.number(f"{key}.layer_norm_eps", 0, 1, low_open=True)
  c.integer(f"{key}.posemb_grid", 0, "an integer ≥ 0 (0: the image's grid)")
  _check_init_from(c, key)


def _check_init_from(c, key):
  c.require(isinstance(c.get(f"{key}.init_from", ""), str),
            f"{key}.init_from", "a local path, or '' (start fresh)")


def _vit_relations(c, key):
  shape = vit_shape(c.get(key))
  c.require(shape["width"] % shape["heads"] == 0, f"{key}.heads",
            f"a divisor of the width {shape['width']}")
  c.require(c.get(f"{key}.pool") != "token" or c.get(f"{key}.class_token"),
            f"{key}.pool", "'gap' or 'map' without a class token")
  c.require(c.get(f"{key}.posemb") != "sincos2d" or shape["width"] % 4 == 0,
            f"{key}.posemb", f"'learn' for a width {shape['width']} that is "
            f"not a multiple of 4")
  c.require(c.get("data.image_size") % shape["patch"] == 0,
            "data.image_size", f"a multiple of the ViT patch {shape['patch']}")


def _describe_vit(f):
  shape = vit_shape(f)
  base = vit.parse_variant(f.variant)
  custom = ", ".join(f"{k} {shape[k]}" for k in ("width", "depth", "heads",
                                                 "mlp_dim")
                     if shape[k] != base[k])
  return f"ViT-{f.variant}" + (f" ({custom})" if custom else "")


# --- OpenAI CLIP's ResNet ---

def _build_clip_resnet(f, dtype, remat):
  del remat
  return modified_resnet.ModifiedResNet(
      layers=tuple(f.layers), width=f.width, heads=f.heads,
      output_dim=f.output_dim, grid=f.grid, dtype=dtype)


def _check_clip_resnet(c, key):
  layers = c.get(f"{key}.layers")
  c.require(isinstance(layers, (tuple, list)) and len(layers) == 4 and all(
      isinstance(n, int) and not isinstance(n, bool) and n >= 1
      for n in layers), f"{key}.layers", "4 block counts ≥ 1, e.g. (3, 4, 6, 3)")
  for k in ("width", "heads", "output_dim", "grid"):
    c.integer(f"{key}.{k}", 1)
  _check_init_from(c, key)


def _clip_resnet_relations(c, key):
  width, heads = c.get(f"{key}.width"), c.get(f"{key}.heads")
  c.require(width % 2 == 0, f"{key}.width", "even (the stem halves it)")
  c.require((32 * width) % heads == 0, f"{key}.heads",
            f"a divisor of the final map's {32 * width} channels")


def _describe_clip_resnet(f):
  return (f"CLIP ResNet {'-'.join(map(str, f.layers))} ×{f.width}, "
          f"attention pool {f.heads} heads → {f.output_dim}")


# --- BERT ---

def _build_bert(f, dtype, remat):
  return text.TextEncoder(
      vocab_size=f.vocab_size, hidden=f.hidden, layers=f.layers,
      heads=f.heads, mlp_dim=f.mlp_dim, max_len=f.max_len, pooling=f.pooling,
      dropout=f.dropout, dtype=dtype, remat=remat,
      **{k: f[k] for k in ("type_vocab_size", "layer_norm_eps") if k in f})


def _check_text_shape(c, key):
  for k in ("vocab_size", "hidden", "layers", "heads", "mlp_dim", "max_len"):
    c.integer(f"{key}.{k}", 1)
  c.number(f"{key}.dropout", 0, 1, high_open=True)
  c.integer(f"{key}.train_last_layers", -1,
            "an integer ≥ -1 (-1: train all; 0: freeze the text tower)")


def _text_relations(c, key):
  hidden, heads = c.get(f"{key}.hidden"), c.get(f"{key}.heads")
  c.require(hidden % heads == 0, f"{key}.heads",
            f"a divisor of {key}.hidden={hidden}")
  max_len, max_tokens = c.get(f"{key}.max_len"), c.get("data.max_tokens")
  c.require(max_len >= max_tokens, f"{key}.max_len",
            f"≥ data.max_tokens={max_tokens} (one position embedding per "
            f"token)")
  last, layers = c.get(f"{key}.train_last_layers", -1), c.get(f"{key}.layers")
  c.require(last <= layers, f"{key}.train_last_layers",
            f"≤ {key}.layers={layers}")


def _check_bert(c, key):
  _check_text_shape(c, key)
  c.one_of(f"{key}.pooling", text.POOLINGS)


# --- CLIP's and SigLIP's text transformers ---

def _build_clip_text(f, dtype, remat):
  return clip_text.CLIPTextTransformer(
      vocab_size=f.vocab_size, width=f.hidden, layers=f.layers, heads=f.heads,
      mlp_dim=f.mlp_dim, max_len=f.max_len, pooling=f.pooling,
      causal=f.causal, mask_padding=f.mask_padding, act=f.act,
      layer_norm_eps=f.layer_norm_eps, projection=f.projection,
      dropout=f.dropout, dtype=dtype, remat=remat)


def _check_clip_text(c, key):
  _check_text_shape(c, key)
  c.one_of(f"{key}.pooling", clip_text.POOLINGS)
  c.one_of(f"{key}.act", tuple(activations.ACTIVATIONS))
  c.integer(f"{key}.projection", 0, "an integer ≥ 0 (0: no head Dense)")
  c.number(f"{key}.layer_norm_eps", 0, 1, low_open=True)
  _check_init_from(c, key)


def _describe_text(kind):
  return lambda f: f"{kind} {f.layers}×{f.hidden}"


_TEXT_SHAPE = ("vocab_size", "hidden", "layers", "heads", "mlp_dim", "max_len",
               "dropout", "train_last_layers")
_CLIP_TEXT_FIELDS = _TEXT_SHAPE + ("pooling", "causal", "mask_padding", "act",
                                   "layer_norm_eps", "projection",
                                   "init_from")

IMAGE_TOWERS: dict[str, Tower] = {
    "resnet": Tower(_build_resnet, ("depth", "width", "im2col"),
                    _check_resnet, _no_relations, _describe_resnet,
                    torch_export=_resnet_export),
    "vit": Tower(_build_vit, ("variant", "width", "depth", "heads", "mlp_dim",
                              "pool", "posemb", "class_token", "pre_norm",
                              "act", "layer_norm_eps", "scan",
                              "posemb_grid", "init_from"),
                 _check_vit, _vit_relations, _describe_vit),
    "clip_resnet": Tower(_build_clip_resnet, ("layers", "width", "heads",
                                              "output_dim", "grid",
                                              "init_from"),
                         _check_clip_resnet, _clip_resnet_relations,
                         _describe_clip_resnet),
}

TEXT_TOWERS: dict[str, Tower] = {
    "bert": Tower(_build_bert, _TEXT_SHAPE + (
        "pooling", "pretrained", "type_vocab_size", "layer_norm_eps"),
                  _check_bert, _text_relations, _describe_text("BERT"),
                  hf_export=text.export_pretrained),
    "clip": Tower(_build_clip_text, _CLIP_TEXT_FIELDS, _check_clip_text,
                  _text_relations, _describe_text("CLIP text")),
    "siglip": Tower(_build_clip_text, _CLIP_TEXT_FIELDS, _check_clip_text,
                    _text_relations, _describe_text("SigLIP text")),
}


def check(c, key: str, table: dict[str, Tower], default: str) -> None:
  """Validation of one tower section: a known name, no field another tower
  owns (a switched `name` keeps the old tower's fields), each domain."""
  fields = c.get(key)
  if fields is None:
    return
  name = name_of(fields, default)
  if name not in table:
    c.problems.append(f"{key}.name={name!r} must be one of {sorted(table)}")
    return
  row = table[name]
  allowed = set(row.fields) | {"name", "locked"}
  unknown = sorted(set(fields.keys()) - allowed)
  if unknown:
    c.problems.append(
        f"{key} has fields the {name} tower does not take: "
        f"{', '.join(unknown)} (its fields: {', '.join(row.fields)}); pick "
        f"a tower with the config's argument, e.g. "
        f"--config=configs/default.py:image=vit,text=clip")
    return
  c.require(isinstance(fields.get("locked", False), bool), f"{key}.locked",
            "True or False")
  row.check(c, key)


def check_relations(c, key: str, table: dict[str, Tower],
                    default: str) -> None:
  """Validation of the relations within one tower section, after `check`
  found every field in its domain."""
  fields = c.get(key)
  if fields is not None:
    table[name_of(fields, default)].relations(c, key)


def check_export(fields, kind: str) -> Tower:
  """The row of a run's `model.image` (kind "image", torch_export) or
  `model.text` section ("text", hf_export); ValueError (one line) when that
  tower has no such export."""
  if kind == "image":
    row, attr, what = image_tower(fields), "torch_export", "a PyTorch export"
  else:
    row, attr, what = text_tower(fields), "hf_export", "a transformers export"
  if getattr(row, attr) is None:
    default = DEFAULT_IMAGE if kind == "image" else DEFAULT_TEXT
    exportable = sorted(n for n, r in (IMAGE_TOWERS if kind == "image"
                                       else TEXT_TOWERS).items()
                        if getattr(r, attr) is not None)
    raise ValueError(
        f"this run's {kind} tower is {name_of(fields, default)!r} "
        f"({row.describe(fields)}), which has no {what} yet; "
        f"export_{kind} writes {', '.join(exportable)} towers")
  return row


def build_image(fields: ml_collections.ConfigDict, dtype, remat: bool):
  """The image tower of a `model.image` section."""
  return image_tower(fields).build(fields, dtype, remat)


def build_text(fields: ml_collections.ConfigDict, dtype, remat: bool):
  """The text tower of a `model.text` section."""
  return text_tower(fields).build(fields, dtype, remat)
