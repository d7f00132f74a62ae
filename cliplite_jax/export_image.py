r"""Exports a trained image tower (and the heads) for PyTorch.

  python -m cliplite_jax.export_image --workdir=WORKDIR --out=DIR [--step=N]

Writes, into the new directory DIR:
  image_tower.safetensors  the ResNet trunk as a torchvision state_dict (no
                           `fc`), BatchNorm running statistics included
  heads.safetensors        both projection heads and the critic's log-scale
  export.json              architecture, preprocessing, step, how to load
  *.pth                    the same state_dicts for torch.load, when PyTorch
                           is installed
At width 1.0 the tower loads into `torchvision.models.resnet{18,...,152}()`
(with `fc = torch.nn.Identity()`); at other widths into
`cliplite_jax.torch_models.ResNet(depth, width)`, whose names are the same.
"""
from __future__ import annotations

import importlib.util
import json
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
from cliplite_jax.models import cliplite, torch_layout, towers

FLAGS = flags.FLAGS
IMAGE_TOWER_FILE = torch_layout.IMAGE_TOWER_FILE
HEADS_FILE = torch_layout.HEADS_FILE
EXPORT_FILE = torch_layout.EXPORT_FILE


def torchvision_name(depth: int, width: float) -> str | None:
  """"resnetN" when torchvision has the architecture, else None."""
  return f"resnet{depth}" if width == 1.0 else None


def state_dicts(config, variables, step: int) -> tuple[dict, dict, dict]:
  """(image tower state_dict, heads state_dict, description) of restored
  `variables`; arrays float32 (BatchNorm counters int64 [] = `step`)."""
  params = jax.tree.map(np.asarray, jax.device_get(variables["params"]))
  stats = jax.tree.map(np.asarray, jax.device_get(variables["batch_stats"]))
  image = config.model.image
  tower = towers.image_tower(image).torch_export(
      params[cliplite.IMAGE_TOWER], stats[cliplite.IMAGE_TOWER], image, step)
  heads = {}
  for name in ("image_head", "text_head"):
    heads.update(torch_layout.head_state_dict(name, params[name], stats[name],
                                              batches_seen=step))
  heads["log_scale"] = np.asarray(params["log_scale"], np.float32)
  if "logit_bias" in params:
    heads["logit_bias"] = np.asarray(params["logit_bias"], np.float32)
  num_features = towers.build_image(image, np.float32, False).num_features
  description = {
      "step": step,
      "image_tower": {
          "file": IMAGE_TOWER_FILE, "depth": image.depth,
          "width": image.width, "num_features": num_features,
          "torchvision": torchvision_name(image.depth, image.width)},
      "preprocess": {
          "image_size": config.data.image_size,
          "decode": "EXIF orientation applied; 16-bit grey images "
                    "reduced to 8 bits by v >> 8",
          "crop": "the central square of the short side, resized "
                  "bilinearly to image_size (PIL)",
          "input": "RGB in [0, 1], minus mean, over std, NCHW float32",
          "mean": list(augment.IMAGENET_MEAN),
          "std": list(augment.IMAGENET_STD)},
      "heads": {
          "file": HEADS_FILE, "proj_dim": config.model.proj_dim,
          "image_head_in": num_features,
          "text_head_in": towers.build_text(config.model.text, np.float32,
                                            False).num_features,
          "embedding": "head(pooled features), L2-normalised; the critic "
                       "scores exp(log_scale) * cosine"},
      "text_tower": "python -m cliplite_jax.export_text --workdir=... "
                    "--out=... (a transformers BertModel directory)",
  }
  return tower, heads, description


def export(workdir: str, out: str, step: int | None = None) -> int:
  """Restores `step` (latest if None) of WORKDIR and writes the new
  directory `out` (see the module doc); returns the step exported. Files
  are written to a new hidden folder beside it and renamed at the end, so
  `out` is complete or absent."""
  config = run_dir.saved_config(workdir)
  try:
    towers.check_export(config.model.image, "image")
  except ValueError as e:
    raise config_io.UserError(str(e)) from e
  step, _, variables, _, _ = run_dir.restore(workdir, config, step)
  tower, heads, description = state_dicts(config, variables, step)
  if jax.process_index() != 0:
    return step
  staging = inference.staging_dir(out)
  metadata = {"format": "pt", "step": str(step)}
  save_file(tower, os.path.join(staging, IMAGE_TOWER_FILE),
            metadata=dict(metadata, depth=str(description["image_tower"]
                                              ["depth"]),
                          width=str(description["image_tower"]["width"])))
  save_file(heads, os.path.join(staging, HEADS_FILE), metadata=metadata)
  description["files"] = [IMAGE_TOWER_FILE, HEADS_FILE]
  if _torch_available():
    import torch
    for name, weights in (("image_tower.pth", tower), ("heads.pth", heads)):
      torch.save({k: torch.from_numpy(np.array(v)) for k, v in weights.items()},
                 os.path.join(staging, name))
      description["files"].append(name)
  with open(os.path.join(staging, EXPORT_FILE), "w") as f:
    json.dump(description, f, indent=1)
  inference.publish(staging, out)
  return step


def _torch_available() -> bool:
  return importlib.util.find_spec("torch") is not None


# New or an empty directory in a writable place, checked before anything
# is restored; shared with export_text and embed.
check_out = inference.check_out


def main(argv):
  def body():
    workdir = config_io.existing_workdir(FLAGS.workdir)
    check_out(FLAGS.out)
    step = export(workdir, FLAGS.out, FLAGS.step)
    with open(os.path.join(FLAGS.out, EXPORT_FILE)) as f:
      tower = json.load(f)["image_tower"]
    target = (f"torchvision.models.{tower['torchvision']}()"
              if tower["torchvision"] else
              f"cliplite_jax.torch_models.ResNet({tower['depth']}, "
              f"{tower['width']})")
    print(f"wrote the image tower and heads of step {step} to {FLAGS.out} "
          f"(loads into {target})")
  cli.run("cliplite_jax.export_image", argv, body, (OSError,))


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "Training directory.")
  flags.DEFINE_string("out", None, "New directory for the exported weights.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.mark_flags_as_required(["workdir", "out"])
  app.run(main)
