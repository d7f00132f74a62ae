"""Hugging Face CLIP / SigLIP vision towers ↔ our `vit.ViT` parameters.

Pure NumPy both ways. State dicts are those of transformers'
`CLIPVisionModel` and `SiglipVisionModel`, with or without the
"vision_model." prefix (a whole `CLIPModel`/`SiglipModel` state dict works
too: only its vision_model.* tensors are read). torch Linear [out, in] is
a flax kernel [in, out]; torch Conv2d [O, I, kh, kw] is [kh, kw, I, O].
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from cliplite_jax.models import activations, hf_bert

PREFIX = "vision_model."
# Tensors HF checkpoints may carry that no parameter corresponds to.
_IGNORED = ("embeddings.position_ids",)


class HFVisionError(ValueError):
  """A Hugging Face vision config or state dict that does not map, and why."""


def vit_fields_from_hf_config(config: Mapping[str, Any]) -> dict:
  """`vit.ViT` constructor fields from a CLIPVisionConfig/SiglipVisionConfig
  dict (`config.to_dict()` or config.json; a whole CLIP/SigLIP config's
  vision_config is used). Raises HFVisionError (one line) for another
  model_type, an unsupported hidden_act, num_channels ≠ 3 or a SigLIP
  tower without its pooling head."""
  if "vision_config" in config:
    config = config["vision_config"]
  kind = config.get("model_type")
  if kind not in ("clip_vision_model", "siglip_vision_model"):
    raise HFVisionError(f"model_type {kind!r} is neither clip_vision_model "
                        f"nor siglip_vision_model")
  clip = kind == "clip_vision_model"
  act = config.get("hidden_act", "quick_gelu" if clip else "gelu_pytorch_tanh")
  if act not in activations.FROM_HF:
    raise HFVisionError(f"{kind}: hidden_act {act!r} is not supported (only "
                        f"{', '.join(activations.FROM_HF)})")
  if config.get("num_channels", 3) != 3:
    raise HFVisionError(f"{kind}: num_channels {config['num_channels']}; the "
                        f"tower takes RGB images")
  if not clip and not config.get("vision_use_head", True):
    raise HFVisionError(f"{kind}: vision_use_head=False; only SigLIP towers "
                        f"with their attention-pooling head load")
  return dict(
      width=config["hidden_size"], depth=config["num_hidden_layers"],
      heads=config["num_attention_heads"], mlp_dim=config["intermediate_size"],
      patch=config["patch_size"],
      posemb_grid=config["image_size"] // config["patch_size"],
      act=activations.FROM_HF[act],
      layer_norm_eps=config.get("layer_norm_eps", 1e-5 if clip else 1e-6),
      pool="token" if clip else "map", posemb="learn", class_token=clip,
      pre_norm=clip)


# (pool, class_token, pre_norm) → the HF family whose vision tower has them.
_FAMILIES = {("token", True, True): "clip", ("map", False, False): "siglip"}


def vit_family(pool: str, class_token: bool, pre_norm: bool,
               posemb: str) -> str | None:
  """"clip" or "siglip": the HF vision tower a ViT of these options is
  (CLIP: token pool, class token, pre_norm; SigLIP: map pool, neither;
  both a learned posemb), or None."""
  if posemb != "learn":
    return None
  return _FAMILIES.get((pool, class_token, pre_norm))


def hf_config_from_vit(module) -> dict:
  """The CLIPVisionConfig or SiglipVisionConfig dict of a `vit.ViT` that HF
  can hold (`vit_family`), posemb_grid set. Else HFVisionError."""
  family = vit_family(module.pool, module.class_token, module.pre_norm,
                      module.posemb)
  if family is None or not module.posemb_grid:
    raise HFVisionError(
        f"ViT(pool={module.pool!r}, class_token={module.class_token}, "
        f"pre_norm={module.pre_norm}, posemb={module.posemb!r}, posemb_grid="
        f"{module.posemb_grid}) is neither an HF CLIP nor a SigLIP tower")
  return {
      "model_type": f"{family}_vision_model",
      "hidden_size": module.width, "num_hidden_layers": module.depth,
      "num_attention_heads": module.heads,
      "intermediate_size": module.mlp_dim, "patch_size": module.patch,
      "image_size": module.posemb_grid * module.patch, "num_channels": 3,
      "hidden_act": activations.TO_HF[module.act],
      "layer_norm_eps": module.layer_norm_eps}


def _linear(hf: str, ours: tuple, weight: str = "kernel",
            layout: str = "linear") -> list:
  return [(f"{hf}.weight", (*ours, weight), layout),
          (f"{hf}.bias", (*ours, "bias"), "same")]


def _norm(hf: str, ours: tuple) -> list:
  return _linear(hf, ours, "scale", "same")


def _mlp(hf: str, ours: tuple) -> list:
  return _linear(f"{hf}.fc1", (*ours, "fc1")) + _linear(f"{hf}.fc2",
                                                       (*ours, "fc2"))


def _names(num_layers: int, clip: bool) -> list[tuple[str, tuple, str]]:
  """(HF name without prefix, our path, layout) for every mapped tensor,
  but SigLIP's head in_proj (split in three) and CLIP's absent patch bias."""
  names = [("embeddings.patch_embedding.weight", ("patch_embed", "kernel"),
            "conv"),
           ("embeddings.position_embedding.weight", ("pos_embed",), "batch"),
           *_norm("post_layernorm", ("ln_post",))]
  if clip:
    names += [("embeddings.class_embedding", ("cls",), "token"),
              *_norm("pre_layrnorm", ("ln_pre",))]
  else:
    names += [("embeddings.patch_embedding.bias", ("patch_embed", "bias"),
               "same"),
              ("head.probe", ("map_head", "probe"), "same"),
              *_linear("head.attention.out_proj", ("map_head", "attn", "out")),
              *_norm("head.layernorm", ("map_head", "ln")),
              *_mlp("head.mlp", ("map_head", "mlp"))]
  for i in range(num_layers):
    hf, ours = f"encoder.layers.{i}.", (f"block_{i}",)
    names += [*_norm(hf + "layer_norm1", (*ours, "ln_1")),
              *_norm(hf + "layer_norm2", (*ours, "ln_2")),
              *_mlp(hf + "mlp", (*ours, "mlp"))]
    for proj, ours_proj in (("q", "query"), ("k", "key"), ("v", "value"),
                            ("out", "out")):
      names += _linear(f"{hf}self_attn.{proj}_proj", (*ours, "attn",
                                                      ours_proj))
  return names


# layout → (HF tensor → ours, ours → HF tensor).
_LAYOUTS = {
    "same": (lambda v: v, lambda v: v),
    "linear": (lambda v: v.T, lambda v: v.T),
    "conv": (lambda v: v.transpose(2, 3, 1, 0),
             lambda v: v.transpose(3, 2, 0, 1)),
    "batch": (lambda v: v[None], lambda v: v[0]),
    "token": (lambda v: v.reshape(1, 1, -1), lambda v: v.reshape(-1)),
}


def _vision_tensors(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Float32 numpy tensors by name without "vision_model."; where any name
  has that prefix, only those names."""
  if any(k.startswith(PREFIX) for k in state_dict):
    state_dict = {k[len(PREFIX):]: v for k, v in state_dict.items()
                  if k.startswith(PREFIX)}
  out = {}
  for name, value in state_dict.items():
    if hasattr(value, "detach"):  # a torch tensor, maybe bfloat16
      value = value.detach().cpu().float().numpy()
    out[name] = np.asarray(value, np.float32)
  return out


def _params(state_dict: Mapping[str, Any], num_layers: int, clip: bool,
            scan: bool) -> dict:
  tensors = _vision_tensors(state_dict)
  names = _names(num_layers, clip)
  wanted = {name for name, _, _ in names}
  if not clip:
    wanted |= {"head.attention.in_proj_weight", "head.attention.in_proj_bias"}
  missing = sorted(wanted - set(tensors))
  extra = sorted(set(tensors) - wanted - set(_IGNORED))
  kind = "CLIP" if clip else "SigLIP"
  if missing or extra:
    raise HFVisionError(
        f"not an HF {kind} vision tower of {num_layers} layers: "
        f"{len(missing)} tensors missing (e.g. {missing[:3]}), {len(extra)} "
        f"unexpected (e.g. {extra[:3]})")
  params = {}
  for name, path, layout in names:
    hf_bert.tree_set(params, path, _LAYOUTS[layout][0](tensors[name]))
  if clip:
    # HF CLIP's patch conv has no bias; ours does.
    hf_bert.tree_set(params, ("patch_embed", "bias"),
                     np.zeros(tensors["post_layernorm.bias"].shape,
                              np.float32))
  else:
    weights = np.split(tensors["head.attention.in_proj_weight"], 3)
    biases = np.split(tensors["head.attention.in_proj_bias"], 3)
    for proj, w, b in zip(("query", "key", "value"), weights, biases):
      hf_bert.tree_set(params, ("map_head", "attn", proj),
                       {"kernel": w.T, "bias": b})
  return stack_blocks(params) if scan else params


def clip_vision_params(state_dict: Mapping[str, Any], num_layers: int,
                       scan: bool = False) -> dict:
  """`vit.ViT` params (float32 numpy tree) from an HF CLIPVisionModel state
  dict {name: array or torch tensor} with `num_layers` encoder layers; the
  `scan` layout (`stack_blocks`) if asked. The patch bias is zero. A
  missing or unexpected tensor is an HFVisionError naming examples."""
  return _params(state_dict, num_layers, True, scan)


def siglip_vision_params(state_dict: Mapping[str, Any], num_layers: int,
                         scan: bool = False) -> dict:
  """`vit.ViT` params (float32 numpy tree) from an HF SiglipVisionModel
  state dict (with its attention-pooling head); as `clip_vision_params`."""
  return _params(state_dict, num_layers, False, scan)


def _num_layers(params: Mapping) -> int:
  if "blocks" in params:
    return len(np.asarray(params["blocks"]["ln_1"]["scale"]))
  return sum(key.startswith("block_") for key in params)


def _state_dict(params: Mapping, clip: bool, prefix: str) -> dict:
  params = unstack_blocks(as_numpy(params))
  for part in ("pos_embed", "cls", "ln_pre") if clip else ("pos_embed",
                                                           "map_head"):
    if part not in params:
      raise HFVisionError(f"params have no {part}; an HF "
                          f"{'CLIP' if clip else 'SigLIP'} tower needs one")
  num_layers = _num_layers(params)
  out = {name: _LAYOUTS[layout][1](hf_bert.tree_get(params, path))
         for name, path, layout in _names(num_layers, clip)}
  if clip:
    # HF CLIP has no patch bias: it moves into every patch's position
    # embedding (same sum; resizing preserves it, its weights sum to 1).
    posemb = out["embeddings.position_embedding.weight"].copy()
    posemb[1:] += params["patch_embed"]["bias"]
    out["embeddings.position_embedding.weight"] = posemb
  else:
    attn = params["map_head"]["attn"]
    out["head.attention.in_proj_weight"] = np.concatenate(
        [attn[p]["kernel"].T for p in ("query", "key", "value")])
    out["head.attention.in_proj_bias"] = np.concatenate(
        [attn[p]["bias"] for p in ("query", "key", "value")])
  return {prefix + name: np.ascontiguousarray(value, np.float32)
          for name, value in out.items()}


def to_clip_vision_state_dict(params: Mapping, prefix: str = "") -> dict:
  """An HF CLIPVisionModel state dict {name: float32 array} from the params
  of a CLIP-shaped `vit.ViT` (`hf_config_from_vit`), either block layout.
  transformers 5's CLIPVisionModel names have no prefix; older ones, and
  CLIPModel, want prefix="vision_model."."""
  return _state_dict(params, True, prefix)


def to_siglip_vision_state_dict(params: Mapping, prefix: str = "") -> dict:
  """An HF SiglipVisionModel state dict from a SigLIP-shaped `vit.ViT`'s
  params; as `to_clip_vision_state_dict`."""
  return _state_dict(params, False, prefix)


def as_numpy(tree: Mapping) -> dict:
  """A params tree (jax or numpy leaves, FrozenDict or dict) as nested
  dicts of float32 numpy arrays."""
  if isinstance(tree, Mapping):
    return {k: as_numpy(v) for k, v in tree.items()}
  return np.asarray(tree, np.float32)


def stack_blocks(params: Mapping) -> dict:
  """Unrolled layout (block_0 … block_{n-1}) → ViT(scan=True)'s: one
  `blocks` subtree, each leaf stacked on a new leading [n] axis."""
  params = dict(params)
  blocks = [params.pop(f"block_{i}") for i in range(_num_layers(params))]
  stack = lambda *leaves: np.stack([np.asarray(x) for x in leaves])
  params["blocks"] = _map(stack, *blocks)
  return params


def unstack_blocks(params: Mapping) -> dict:
  """Inverse of `stack_blocks`; unrolled params come back as they are."""
  params = dict(params)
  if "blocks" in params:
    blocks = params.pop("blocks")
    for i in range(_num_layers({"blocks": blocks})):
      params[f"block_{i}"] = _map(lambda x, i=i: np.asarray(x)[i], blocks)
  return params


def _map(fn, *trees):
  if isinstance(trees[0], Mapping):
    return {k: _map(fn, *(t[k] for t in trees)) for k in trees[0]}
  return fn(*trees)
