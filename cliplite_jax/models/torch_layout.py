"""Our parameter trees in PyTorch's layout: torchvision ResNet and the heads.

Pure NumPy, so exporting needs no PyTorch. Names and shapes are those of
`torchvision.models.resnet{18,34,50,101,152}` (without `fc`) and of
`cliplite_jax.torch_models`; every BatchNorm brings its running statistics
and a `num_batches_tracked` counter, so `load_state_dict(strict=True)` works.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from cliplite_jax.models import resnet

Tree = Mapping[str, Any]
# The files `python -m cliplite_jax.export_image` writes.
IMAGE_TOWER_FILE = "image_tower.safetensors"
HEADS_FILE = "heads.safetensors"
EXPORT_FILE = "export.json"


def _conv(kernel) -> np.ndarray:
  """flax [kh, kw, in, out] → torch [out, in, kh, kw], float32."""
  return np.ascontiguousarray(np.asarray(kernel, np.float32).transpose(3, 2, 0, 1))


def _linear(kernel) -> np.ndarray:
  """flax [in, out] → torch [out, in], float32."""
  return np.ascontiguousarray(np.asarray(kernel, np.float32).T)


def _batch_norm(prefix: str, params: Tree, stats: Tree,
                batches_seen: int) -> dict[str, np.ndarray]:
  """torch BatchNorm entries. At evaluation both frameworks normalise with
  the running mean and variance as stored, so these carry over as they
  are; flax averaged biased batch variances into them, where torch,
  trained further, averages unbiased ones."""
  return {f"{prefix}.weight": np.asarray(params["scale"], np.float32),
          f"{prefix}.bias": np.asarray(params["bias"], np.float32),
          f"{prefix}.running_mean": np.asarray(stats["mean"], np.float32),
          f"{prefix}.running_var": np.asarray(stats["var"], np.float32),
          f"{prefix}.num_batches_tracked": np.asarray(batches_seen, np.int64)}


def resnet_state_dict(params: Tree, batch_stats: Tree, depth: int,
                      batches_seen: int = 0) -> dict[str, np.ndarray]:
  """The `resnet.ResNet` trunk's variables as a torchvision ResNet
  state_dict (no `fc`): {name: float32 array (int64 for the counters)}.

  Args:
    params, batch_stats: the image tower's subtrees (`image_encoder`).
    depth: the tower's depth (a key of `resnet.LAYOUTS`).
    batches_seen: recorded as every BatchNorm's `num_batches_tracked`.
  """
  _, stages = resnet.LAYOUTS[depth]
  out = {"conv1.weight": _conv(params["stem_conv"]["kernel"])}
  out.update(_batch_norm("bn1", params["stem_norm"], batch_stats["stem_norm"],
                         batches_seen))
  for stage, num_blocks in enumerate(stages):
    for block in range(num_blocks):
      ours = f"stage{stage + 1}_block{block + 1}"
      theirs = f"layer{stage + 1}.{block}"
      p, s = params[ours], batch_stats[ours]
      convs = sorted(k for k in p if k.startswith("Conv_"))
      for i, name in enumerate(convs):
        out[f"{theirs}.conv{i + 1}.weight"] = _conv(p[name]["kernel"])
        out.update(_batch_norm(f"{theirs}.bn{i + 1}", p[f"BatchNorm_{i}"],
                               s[f"BatchNorm_{i}"], batches_seen))
      if "downsample_conv" in p:
        out[f"{theirs}.downsample.0.weight"] = _conv(
            p["downsample_conv"]["kernel"])
        out.update(_batch_norm(f"{theirs}.downsample.1", p["downsample_norm"],
                               s["downsample_norm"], batches_seen))
  return out


def head_state_dict(prefix: str, params: Tree, batch_stats: Tree,
                    batches_seen: int = 0) -> dict[str, np.ndarray]:
  """An `MILinearBlock`'s variables as `torch_models.MILinearBlock`'s
  state_dict, names under `prefix.`."""
  out = {f"{prefix}.linear1.weight": _linear(params["linear1"]["kernel"])}
  out.update(_batch_norm(f"{prefix}.norm", params["norm"],
                         batch_stats["norm"], batches_seen))
  for name in ("linear2", "shortcut"):
    out[f"{prefix}.{name}.weight"] = _linear(params[name]["kernel"])
    out[f"{prefix}.{name}.bias"] = np.asarray(params[name]["bias"], np.float32)
  out[f"{prefix}.out_norm.weight"] = np.asarray(params["out_norm"]["scale"],
                                                np.float32)
  out[f"{prefix}.out_norm.bias"] = np.asarray(params["out_norm"]["bias"],
                                              np.float32)
  return out
