"""CLIP-Lite in PyTorch for the train-step benchmark (bench only).

The same computation as one `cliplite_jax` train step: ResNet v1.5 (stride
on the 3×3 conv, width multiplier), transformers' BertModel, the
MILinearBlock heads, the Deep InfoMax prior discriminators, the JSD bound
with the negative rolled by one, SGD with momentum and weight decay, and
gradient-norm clipping. Lookahead (a parameter average every k steps) is
left out: it costs one axpy per parameter every 5 steps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel


class Block(nn.Module):
  """Basic (two 3×3) or bottleneck (1×1, strided 3×3, 1×1 ×4) residual block."""

  def __init__(self, kind: str, in_ch: int, filters: int, stride: int):
    super().__init__()
    out_ch = filters * 4 if kind == "bottleneck" else filters
    if kind == "bottleneck":
      self.body = nn.Sequential(
          nn.Conv2d(in_ch, filters, 1, bias=False), nn.BatchNorm2d(filters),
          nn.ReLU(inplace=True),
          nn.Conv2d(filters, filters, 3, stride, 1, bias=False),
          nn.BatchNorm2d(filters), nn.ReLU(inplace=True),
          nn.Conv2d(filters, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))
    else:
      self.body = nn.Sequential(
          nn.Conv2d(in_ch, filters, 3, stride, 1, bias=False),
          nn.BatchNorm2d(filters), nn.ReLU(inplace=True),
          nn.Conv2d(filters, filters, 3, 1, 1, bias=False),
          nn.BatchNorm2d(filters))
    self.shortcut = nn.Identity()
    if stride != 1 or in_ch != out_ch:
      self.shortcut = nn.Sequential(
          nn.Conv2d(in_ch, out_ch, 1, stride, bias=False),
          nn.BatchNorm2d(out_ch))
    self.out_ch = out_ch

  def forward(self, x):
    return F.relu(self.body(x) + self.shortcut(x))


LAYOUTS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
           50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3))}


class ResNet(nn.Module):
  """images float [B, 3, H, W] → pooled features [B, d]."""

  def __init__(self, depth: int, width: float):
    super().__init__()
    kind, stages = LAYOUTS[depth]
    stem = int(64 * width)
    layers = [nn.Conv2d(3, stem, 7, 2, 3, bias=False), nn.BatchNorm2d(stem),
              nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    channels = stem
    for stage, blocks in enumerate(stages):
      for b in range(blocks):
        block = Block(kind, channels, int(64 * width * 2**stage),
                      2 if stage > 0 and b == 0 else 1)
        layers.append(block)
        channels = block.out_ch
    self.trunk = nn.Sequential(*layers)
    self.num_features = channels

  def forward(self, x):
    return self.trunk(x).mean(dim=(2, 3))


class MILinearBlock(nn.Module):
  def __init__(self, d: int, out: int):
    super().__init__()
    self.linear1 = nn.Linear(d, out, bias=False)
    self.norm = nn.BatchNorm1d(out)
    self.linear2 = nn.Linear(out, out)
    self.shortcut = nn.Linear(d, out)
    self.out_norm = nn.LayerNorm(out)

  def forward(self, x):
    h = self.linear2(F.relu(self.norm(self.linear1(x))))
    return self.out_norm(h + self.shortcut(x))


def prior(d: int, widths) -> nn.Sequential:
  layers, width = [], d
  for w in widths:
    layers += [nn.Linear(width, w), nn.ReLU()]
    width = w
  return nn.Sequential(*layers, nn.Linear(width, 1))


class CLIPLite(nn.Module):
  """The model of `cliplite_jax.models.cliplite.build(config)`."""

  def __init__(self, config):
    super().__init__()
    m = config.model
    self.image = ResNet(m.image.depth, m.image.width)
    self.text = BertModel(BertConfig(
        vocab_size=m.text.vocab_size, hidden_size=m.text.hidden,
        num_hidden_layers=m.text.layers, num_attention_heads=m.text.heads,
        intermediate_size=m.text.mlp_dim, max_position_embeddings=m.text.max_len,
        hidden_dropout_prob=m.text.dropout,
        attention_probs_dropout_prob=m.text.dropout),
        add_pooling_layer=m.text.pooling == "pooler")
    self.pooling = m.text.pooling
    d_img, d_txt = self.image.num_features, m.text.hidden
    self.image_head = MILinearBlock(d_img, m.proj_dim)
    self.text_head = MILinearBlock(d_txt, m.proj_dim)
    self.image_prior = prior(d_img, m.prior_widths)
    self.text_prior = prior(d_txt, m.prior_widths)
    self.log_scale = nn.Parameter(torch.tensor(1 / m.init_temperature).log())

  def forward(self, images, input_ids, attention_mask, prior_weight: float):
    img_f = self.image(images)
    out = self.text(input_ids=input_ids, attention_mask=attention_mask)
    if self.pooling == "pooler":
      txt_f = out.pooler_output
    else:
      mask = attention_mask.unsqueeze(-1).float()
      txt_f = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1)
    img = F.normalize(self.image_head(img_f), dim=-1)
    txt = F.normalize(self.text_head(txt_f), dim=-1)
    scale = self.log_scale.exp()
    joint = (img * txt).sum(-1) * scale
    marginal = (img * txt.roll(-1, 0)).sum(-1) * scale
    jsd = F.softplus(marginal).mean() + F.softplus(-joint).mean()
    priors = 0.0
    for features, disc in ((img_f, self.image_prior), (txt_f, self.text_prior)):
      noise = torch.rand_like(features)
      priors = priors - (F.logsigmoid(disc(noise)).mean()
                         + F.logsigmoid(-disc(features)).mean())
    return (1 - prior_weight) * jsd + prior_weight * priors


def make_step(config, channels_last: bool = False):
  """A `step(images uint8 [B, H, W, 3], ids, mask) -> loss` closure."""
  model = CLIPLite(config).train()
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
  opt = torch.optim.SGD(model.parameters(), lr=0.01,
                        momentum=config.optim.momentum,
                        weight_decay=config.optim.weight_decay)
  mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
  std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255

  def step(images, input_ids, attention_mask):
    x = (images.permute(0, 3, 1, 2).float() - mean) / std
    if channels_last:
      x = x.contiguous(memory_format=torch.channels_last)
    loss = model(x, input_ids, attention_mask, config.loss.prior_weight)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), config.optim.clip_norm)
    opt.step()
    return loss.item()

  return step
