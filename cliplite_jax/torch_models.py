"""PyTorch modules for exported towers (`python -m cliplite_jax.export_image`).

Needs PyTorch (not a dependency of training). `ResNet` has torchvision's
module names and forward pass, with our width multiplier on every stage
(the stem too); at width 1.0 its state_dict is that of
`torchvision.models.resnet{18,34,50,101,152}()` without `fc`, so either
loads the same file. `MILinearBlock` is the projection head.

  tower = load_image_tower("exported")          # [B, 3, H, W] → [B, F]
  heads = load_heads("exported")                # image_head, text_head
"""
from __future__ import annotations

import importlib
import json
import os

import torch
from safetensors.torch import load_file
from torch import nn

from cliplite_jax.models.resnet import LAYOUTS
from cliplite_jax.models.torch_layout import (EXPORT_FILE, HEADS_FILE,
                                              IMAGE_TOWER_FILE)


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)


class _Block(nn.Module):
  """torchvision's BasicBlock (two 3×3) or Bottleneck (1×1, 3×3 with the
  stride, 1×1 to 4× the channels), with their attribute names."""

  def __init__(self, kind: str, cin: int, filters: int, stride: int):
    super().__init__()
    if kind == "basic":
      shapes = [(cin, filters, 3, stride), (filters, filters, 3, 1)]
    else:
      shapes = [(cin, filters, 1, 1), (filters, filters, 3, stride),
                (filters, 4 * filters, 1, 1)]
    for i, shape in enumerate(shapes, 1):
      setattr(self, f"conv{i}", _conv(*shape))
      setattr(self, f"bn{i}", nn.BatchNorm2d(shape[1]))
    self.num_convs = len(shapes)
    cout = shapes[-1][1]
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = nn.Sequential(_conv(cin, cout, 1, stride),
                                      nn.BatchNorm2d(cout))

  def forward(self, x):
    y = x
    for i in range(1, self.num_convs + 1):
      y = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(y))
      if i < self.num_convs:
        y = torch.relu(y)
    shortcut = x if self.downsample is None else self.downsample(x)
    return torch.relu(y + shortcut)


class ResNet(nn.Module):
  """ResNet v1.5 trunk: float [B, 3, H, W] (ImageNet-normalised RGB) →
  pooled features float [B, num_features]."""

  def __init__(self, depth: int = 50, width: float = 1.0):
    super().__init__()
    kind, stages = LAYOUTS[depth]
    stem = int(64 * width)
    self.conv1 = _conv(3, stem, 7, 2)
    self.bn1 = nn.BatchNorm2d(stem)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    cin = stem
    for stage, num_blocks in enumerate(stages):
      filters = int(64 * width * 2**stage)
      blocks = []
      for block in range(num_blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        blocks.append(_Block(kind, cin, filters, stride))
        cin = filters * (4 if kind == "bottleneck" else 1)
      setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
    self.num_features = cin

  def forward(self, images):
    x = self.maxpool(torch.relu(self.bn1(self.conv1(images))))
    for stage in range(1, 5):
      x = getattr(self, f"layer{stage}")(x)
    return x.mean(dim=(2, 3))


class MILinearBlock(nn.Module):
  """CLIP-Lite's projection head:
  `LayerNorm(Linear(ReLU(BatchNorm(Linear_nobias(f)))) + Linear(f))`,
  float [B, d] → [B, out_dim] (not normalised)."""

  def __init__(self, in_dim: int, out_dim: int):
    super().__init__()
    self.linear1 = nn.Linear(in_dim, out_dim, bias=False)
    self.norm = nn.BatchNorm1d(out_dim)
    self.linear2 = nn.Linear(out_dim, out_dim)
    self.shortcut = nn.Linear(in_dim, out_dim)
    self.out_norm = nn.LayerNorm(out_dim)

  def forward(self, features):
    hidden = self.linear2(torch.relu(self.norm(self.linear1(features))))
    return self.out_norm(hidden + self.shortcut(features))


def read_export(directory: str) -> dict:
  """The export's description (`export.json`): architecture, preprocessing,
  files."""
  with open(os.path.join(directory, EXPORT_FILE)) as f:
    return json.load(f)


def load_image_tower(directory: str, torchvision: bool | None = None
                     ) -> nn.Module:
  """The exported image tower in eval mode: [B, 3, H, W] → [B, F].

  `torchvision`: build `torchvision.models.resnetN` (width 1.0 only, its
  `fc` replaced by Identity) instead of `ResNet`; None picks it when the
  export is torchvision-compatible and torchvision imports.
  """
  info = read_export(directory)["image_tower"]
  compatible = info["torchvision"] is not None
  if torchvision is None:
    torchvision = compatible and _torchvision_imports()
  if torchvision:
    if not compatible:
      raise ValueError(f"width {info['width']} has no torchvision model")
    import torchvision as tv
    model = getattr(tv.models, info["torchvision"])()
    model.fc = nn.Identity()
  else:
    model = ResNet(info["depth"], info["width"])
  model.load_state_dict(load_file(os.path.join(directory, IMAGE_TOWER_FILE)))
  return model.eval()


def load_heads(directory: str) -> dict[str, nn.Module | torch.Tensor]:
  """{"image_head", "text_head": `MILinearBlock` in eval mode,
  "scale": the critic's scale exp(t), a float tensor []}."""
  info = read_export(directory)["heads"]
  weights = load_file(os.path.join(directory, HEADS_FILE))
  out = {}
  for name in ("image_head", "text_head"):
    head = MILinearBlock(info[f"{name}_in"], info["proj_dim"])
    head.load_state_dict({k[len(name) + 1:]: v for k, v in weights.items()
                          if k.startswith(name + ".")})
    out[name] = head.eval()
  out["scale"] = weights["log_scale"].exp()
  return out


def _torchvision_imports() -> bool:
  try:
    importlib.import_module("torchvision")
  except Exception:  # an absent or broken install: use ours
    return False
  return True
