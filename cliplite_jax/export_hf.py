r"""Exports a trained model as a Hugging Face transformers directory.

  python -m cliplite_jax.export_hf --workdir=WORKDIR --out=DIR [--step=N]

When the towers are CLIP's (a ViT with a class token and ln_pre; CLIP's
causal text transformer) under CLIP's projection heads (`model.head`
"linear"), DIR is a `CLIPModel`; SigLIP's (a ViT with attention pooling;
SigLIP's text transformer) without heads ("identity") make a
`SiglipModel`. Either way DIR holds config.json, model.safetensors,
tokenizer.json (the run's, with tokenizer_config.json) and
preprocessor_config.json, and `from_pretrained(DIR)` gives this run's
embeddings and logits.

With CLIP-Lite's MILinearBlock heads (BatchNorm inside), which those
classes have no place for, the towers alone are written:
DIR/vision_model (`CLIPVisionModel` / `SiglipVisionModel`) and
DIR/text_model (`CLIPTextModel` / `SiglipTextModel`, with the tokenizer),
which give the tower features, not the embeddings; a line says so. Towers
with no transformers form (ResNet, BERT) are refused in one line naming
the exports that take them.
"""
from __future__ import annotations

import json
import math
import os

if __name__ == "__main__":
  from cliplite_jax.training import native_logs
  native_logs.quiet()

import jax
import numpy as np
from absl import app, flags
from safetensors.numpy import save_file

from cliplite_jax import cli, config_io, inference, run_dir
from cliplite_jax.data import augment
from cliplite_jax.models import activations, cliplite, heads, hf_text, hf_vision

FLAGS = flags.FLAGS
# family → (two-tower class, vision class, text class, image processor).
CLASSES = {"clip": ("CLIPModel", "CLIPVisionModel", "CLIPTextModel",
                    "CLIPImageProcessor"),
           "siglip": ("SiglipModel", "SiglipVisionModel", "SiglipTextModel",
                      "SiglipImageProcessor")}


def families(config) -> tuple[str, str]:
  """("clip" | "siglip") of the image and of the text tower of a run's
  config, as transformers has them; UserError (one line) naming a tower
  with no transformers form, before anything is restored."""
  image, text = config.model.image, config.model.text
  name = image.get("name", "resnet")
  if name != "vit":
    raise config_io.UserError(
        f"this run's image tower is {name!r}, which transformers' "
        f"CLIP/SigLIP classes cannot hold"
        + ("; export_image writes it for torchvision (and export_text a "
           "BERT text tower)" if name == "resnet" else ""))
  image_family = hf_vision.vit_family(image.pool, image.class_token,
                                      image.pre_norm, image.posemb)
  if image_family is None:
    raise config_io.UserError(
        f"the ViT (pool={image.pool!r}, class_token={image.class_token}, "
        f"pre_norm={image.pre_norm}, posemb={image.posemb!r}) is neither "
        f"CLIP's (token, True, True, learn) nor SigLIP's (map, False, False, "
        f"learn) as transformers has them")
  name = text.get("name", "bert")
  semantics = hf_text.SEMANTICS.get(name)
  if semantics is None or {k: text.get(k) for k in semantics} != semantics or (
      name == "clip" and text.projection):
    raise config_io.UserError(
        f"the text tower ({name}, pooling={text.get('pooling')!r}, causal="
        f"{text.get('causal')}, mask_padding={text.get('mask_padding')}) is "
        f"neither CLIP's nor SigLIP's as transformers has them"
        + ("; export_text writes a BERT tower" if name == "bert" else ""))
  return image_family, name


def _with_grid(module, params):
  """The ViT module with `posemb_grid` set (from its params' learned
  position embedding when the config left it to the image)."""
  if module.posemb_grid:
    return module
  tokens = params["pos_embed"].shape[1] - module.class_token
  return module.clone(posemb_grid=math.isqrt(tokens))


def text_config(config, family: str, eos_id: int, pad_id: int) -> dict:
  """The CLIPTextConfig / SiglipTextConfig dict of the run's text tower."""
  t = config.model.text
  act = activations.TO_HF[t.act]
  out = {"model_type": f"{family}_text_model", "vocab_size": t.vocab_size,
         "hidden_size": t.hidden, "intermediate_size": t.mlp_dim,
         "num_hidden_layers": t.layers, "num_attention_heads": t.heads,
         "max_position_embeddings": t.max_len, "hidden_act": act,
         "layer_norm_eps": t.layer_norm_eps, "eos_token_id": eos_id,
         "pad_token_id": pad_id, "bos_token_id": None}
  if family == "siglip":
    out["projection_size"] = t.projection
  return out


def preprocessor_config(config, family: str) -> dict:
  """The CLIPImageProcessor / SiglipImageProcessor dict for the run's image
  size and pixel statistics (CLIP's resizes the short side and crops;
  SigLIP's squashes to the square)."""
  mean, std = augment.pixel_stats(config)
  size = config.data.image_size
  pre = {"image_processor_type": CLASSES[family][3], "do_resize": True,
         "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
         "image_mean": list(mean), "image_std": list(std), "resample": 2}
  if family == "clip":
    pre.update(size={"shortest_edge": size}, do_center_crop=True,
               crop_size={"height": size, "width": size})
  else:
    pre.update(size={"height": size, "width": size})
  return pre


def _end_and_pad(tokenizer) -> tuple[int, int]:
  """The id an encoding ends with (CLIP's pooling finds it) and the pad id."""
  encoding = tokenizer.encode("a")
  return (encoding.ids[sum(encoding.attention_mask) - 1],
          tokenizer.padding["pad_id"])


def _write_tokenizer(tokenizer, directory: str, config) -> None:
  tokenizer.save(os.path.join(directory, "tokenizer.json"))
  # The token of the pad id (a "[PAD]" the vocabulary lacks would be added
  # as a new token by transformers).
  pad = tokenizer.id_to_token(tokenizer.padding["pad_id"])
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": pad,
               "model_max_length": config.data.max_tokens}, f, indent=1)


def _write(directory: str, config_dict: dict, tensors: dict) -> None:
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config_dict, f, indent=1)
  # np.array, not ascontiguousarray: that makes logit_scale's [] a [1].
  save_file({k: np.array(v, np.float32, order="C")
             for k, v in tensors.items()},
            os.path.join(directory, "model.safetensors"),
            metadata={"format": "pt"})


def export(workdir: str, out: str, step: int | None = None) -> tuple[int, str]:
  """Writes the run's model as a transformers directory `out` (see the
  module docstring); returns (step, what was written). `out` is complete
  or absent."""
  config = run_dir.saved_config(workdir)
  image_family, text_family = families(config)
  step, model, variables, tokenizer, _ = run_dir.restore(workdir, config, step)
  params = jax.device_get(variables["params"])
  image_params = hf_vision.as_numpy(params[cliplite.IMAGE_TOWER])
  vit = _with_grid(model.image_encoder, image_params)
  two_tower, vision_class = CLASSES[image_family][:2]
  text_class = CLASSES[text_family][2]
  head = heads.head_kind(config.model)
  # One two-tower class: both towers of one family, under its own heads.
  whole = (image_family == text_family
           and head == heads.RELEASED[image_family])
  eos, pad = _end_and_pad(tokenizer)
  vision = dict(hf_vision.hf_config_from_vit(vit))
  text = text_config(config, text_family, eos, pad)
  prefix = "vision_model." if whole else ""
  to_vision = (hf_vision.to_clip_vision_state_dict if image_family == "clip"
               else hf_vision.to_siglip_vision_state_dict)
  to_text = (hf_text.to_clip_text_state_dict if text_family == "clip"
             else hf_text.to_siglip_text_state_dict)
  vision_tensors = to_vision(image_params, prefix=prefix)
  text_tensors = to_text(hf_vision.as_numpy(params[cliplite.TEXT_TOWER]),
                         config.model.text.layers,
                         prefix="text_model." if whole else "")
  if jax.process_index() != 0:
    return step, ""
  out = out.rstrip("/")
  staging = inference.staging_dir(out)
  pre = preprocessor_config(config, image_family)
  if whole:
    tensors = {**vision_tensors, **text_tensors}
    log_scale = np.asarray(params["log_scale"], np.float32)
    if image_family == "clip":
      tensors["visual_projection.weight"] = np.asarray(
          params["image_head"]["Dense_0"]["kernel"]).T
      tensors["text_projection.weight"] = np.asarray(
          params["text_head"]["Dense_0"]["kernel"]).T
      tensors["logit_scale"] = log_scale.reshape(())
    else:
      tensors["logit_scale"] = log_scale.reshape(1)
      tensors["logit_bias"] = np.asarray(
          params.get("logit_bias", 0.0), np.float32).reshape(1)
    hf = {"architectures": [two_tower], "model_type": image_family,
          "text_config": text, "vision_config": vision}
    if image_family == "clip":
      hf["projection_dim"] = config.model.proj_dim
    _write(staging, hf, tensors)
    _write_tokenizer(tokenizer, staging, config)
    with open(os.path.join(staging, "preprocessor_config.json"), "w") as f:
      json.dump(pre, f, indent=1)
    what = f"a transformers {two_tower}"
  else:
    _write(os.path.join(staging, "vision_model"),
           {"architectures": [vision_class], **vision}, vision_tensors)
    with open(os.path.join(staging, "vision_model",
                           "preprocessor_config.json"), "w") as f:
      json.dump(pre, f, indent=1)
    _write(os.path.join(staging, "text_model"),
           {"architectures": [text_class], **text}, text_tensors)
    _write_tokenizer(tokenizer, os.path.join(staging, "text_model"), config)
    why = (f"the heads are CLIP-Lite's MILinearBlocks, which {two_tower} "
           f"has no place for" if head == "milinear" else
           f"a {image_family} image tower with a {text_family} text tower "
           f"under {head} heads is no one transformers class")
    what = (f"the towers alone ({why}): {out}/vision_model is a "
            f"{vision_class} and {out}/text_model a {text_class}, giving "
            f"the tower features, not the embeddings")
  inference.publish(staging, out)
  return step, what


def main(argv):
  def body():
    workdir = config_io.existing_workdir(FLAGS.workdir)
    inference.check_out(FLAGS.out)
    step, what = export(workdir, FLAGS.out, FLAGS.step)
    if what:
      print(f"wrote step {step} to {FLAGS.out} as {what}")
  cli.run("cliplite_jax.export_hf", argv, body, (OSError,))


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "Training directory.")
  flags.DEFINE_string("out", None, "New directory for the transformers model.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.mark_flags_as_required(["workdir", "out"])
  app.run(main)
