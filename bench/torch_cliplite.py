"""CLIP-Lite in PyTorch for the train-step benchmark (bench only).

The same computation as one `cliplite_jax` train step: ResNet v1.5 (stride
on the 3×3 conv, width multiplier), transformers' BertModel, the
MILinearBlock heads, the Deep InfoMax prior discriminators, the JSD bound
with the negative rolled by one, and the optimiser of `cliplite_jax/training/optim.py`
with optax's semantics: global-norm clipping, per-group warmup → cosine
learning rates, SGD with weight decay added to the gradient before momentum,
all wrapped in Lookahead exactly as `optax.lookahead` runs it (both weight
sets written at every step, see `Lookahead`). The image tower alone
(`make_image_tower_step`) is this ResNet or, for a ViT, transformers'
CLIPVisionModel with the JAX tower's weights.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cliplite_jax.torch_models import MILinearBlock


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
    return self.trunk(x).float().mean(dim=(2, 3))  # pooled in float32


def prior(d: int, widths) -> nn.Sequential:
  layers, width = [], d
  for w in widths:
    layers += [nn.Linear(width, w), nn.ReLU()]
    width = w
  return nn.Sequential(*layers, nn.Linear(width, 1))


class CLIPLite(nn.Module):
  """The model of `cliplite_jax.models.cliplite.build(config)`."""

  def __init__(self, config):
    # Imported here, so the optimiser below needs only torch.
    from transformers import BertConfig, BertModel
    super().__init__()
    m = config.model
    kinds = (m.image.get("name", "resnet"), m.text.get("name", "bert"))
    if kinds != ("resnet", "bert"):
      raise NotImplementedError(
          f"the PyTorch CLIP-Lite step has ResNet + BERT towers, this "
          f"config {' + '.join(kinds)} (--part=image_tower times a ViT)")
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
    img_z, txt_z = self.image_head(img_f), self.text_head(txt_f)
    # As the JAX model under bfloat16: the critic, the loss and the prior
    # discriminators in float32.
    with torch.autocast(img_z.device.type, enabled=False):
      img = F.normalize(img_z.float(), dim=-1)
      txt = F.normalize(txt_z.float(), dim=-1)
      scale = self.log_scale.exp()
      joint = (img * txt).sum(-1) * scale
      marginal = (img * txt.roll(-1, 0)).sum(-1) * scale
      jsd = F.softplus(marginal).mean() + F.softplus(-joint).mean()
      priors = 0.0
      for features, disc in ((img_f, self.image_prior),
                             (txt_f, self.text_prior)):
        features = features.float()
        noise = torch.rand_like(features)
        priors = priors - (F.logsigmoid(disc(noise)).mean()
                           + F.logsigmoid(-disc(features)).mean())
    return (1 - prior_weight) * jsd + prior_weight * priors


def lr_schedule(config, peak: float):
  """`optax.warmup_cosine_decay_schedule` of `cliplite_jax.training.optim.schedules`.

  A function of the step count (an int, 0 at the first update; optax's
  `scale_by_schedule` count) to the learning rate (a Python float): linear
  from 0 to `peak` over `optim.warmup_steps`, then cosine to 0 at
  `total_steps`.
  """
  warmup, total = config.optim.warmup_steps, config.total_steps

  def schedule(count: int) -> float:
    if count < warmup:  # optax's polynomial_schedule, power 1, from 0
      return -peak * (1 - count / warmup) + peak
    decay = total - warmup
    done = min(count - warmup, decay)
    return peak * 0.5 * (1 + math.cos(math.pi * done / decay))

  return schedule


def param_groups(model: nn.Module, config) -> list[dict]:
  """`torch.optim` groups named like `optim.lr`'s keys, each with its schedule.

  The two towers are the "image" and "text" groups (optim.group_regex's
  `^image_encoder/` and `^text_encoder/`); heads, discriminators and the
  temperature are "other", as in `cliplite_jax.training.optim.param_labels`.
  """
  o = config.optim
  if dict(o.group_regex) != {"image": "^image_encoder/",
                             "text": "^text_encoder/"}:
    raise NotImplementedError(f"group_regex {dict(o.group_regex)}")
  members = {"image": [], "text": [], "other": []}
  for name, p in model.named_parameters():
    tower = name.split(".", 1)[0]
    members[tower if tower in ("image", "text") else "other"].append(p)
  return [{"params": members[g], "lr": 0.0, "name": g,
           "schedule": lr_schedule(config, o.lr[g])}
          for g in members if members[g]]


@torch.no_grad()
def clip_by_global_norm_(params, max_norm: float) -> None:
  """`optax.clip_by_global_norm` on the `.grad`s of `params`, in place.

  Unlike `nn.utils.clip_grad_norm_` (which scales by max / (norm + 1e-6)
  whenever it is called) gradients are left as they are below `max_norm`.
  No host sync: the scale is a 0-d tensor.
  """
  grads = [p.grad for p in params if p.grad is not None]
  norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
  scale = torch.where(norm < max_norm, torch.ones_like(norm), max_norm / norm)
  torch._foreach_mul_(grads, scale)


class Lookahead:
  """`optax.lookahead(fast, sync_period=k, slow_step_size=alpha)` in PyTorch.

  The model's parameters are the fast weights; `slow` holds a float32 copy
  of each (fast = slow at the start, `LookaheadParams.init_synced`). Call
  `step()` right after the inner optimiser's step has moved the fast weights
  by its update u. optax merges the sync into the update (optax/_src/
  lookahead.py): with d = fast + u - slow and s = 1 on every k-th step
  (else 0),

    slow ← slow + alpha·s·d,    fast ← fast + u − (1 − alpha)·s·d,

  so at a sync step fast and slow both land on slow + alpha·d, and the inner
  optimiser's state (momentum) is left alone (`reset_state=False`).
  `every_step=True` does that arithmetic at every step, as the jitted optax
  step does (s is data there, so XLA computes d and writes both weight sets
  every step); `every_step=False` only on sync steps, the same values
  (s = 0 adds exactly 0) for less work.
  """

  def __init__(self, params, k: int, alpha: float, every_step: bool = True):
    self.fast = [p for p in params]
    self.slow = [p.detach().clone() for p in self.fast]
    self.k, self.alpha, self.every_step = k, alpha, every_step
    self.count = 0  # optax's steps_since_sync

  @torch.no_grad()
  def step(self) -> None:
    sync = float(self.count == self.k - 1)
    self.count = (self.count + 1) % self.k
    if not (sync or self.every_step):
      return
    fast = [p.detach() for p in self.fast]
    diff = torch._foreach_sub(fast, self.slow)  # fast + u − slow
    torch._foreach_add_(self.slow, diff, alpha=self.alpha * sync)
    torch._foreach_add_(fast, diff, alpha=-(1 - self.alpha) * sync)


def make_optimizer(model: nn.Module, config, lookahead_every_step=True):
  """`update()` (after `backward()`): the optimiser of `optim.build(config)`.

  Clip the global gradient norm, set each group's learning rate from its
  schedule at the step count, SGD (momentum, weight decay on the fast
  weights), then Lookahead when `optim.lookahead_k > 0`. SGD runs fused on a
  GPU (one kernel for all parameters) and on `foreach` kernels on CPU, each
  PyTorch's fastest path there.
  """
  o = config.optim
  if o.name != "sgd":
    raise NotImplementedError(f"optim.name {o.name!r} (the bench has 'sgd')")
  if config.model.text.get("train_last_layers", -1) >= 0:
    raise NotImplementedError("model.text.train_last_layers")
  groups = param_groups(model, config)
  params = [p for g in groups for p in g["params"]]
  sgd = torch.optim.SGD(groups, lr=0.0, momentum=o.momentum,
                        weight_decay=o.weight_decay, **_fast_path(params))
  lookahead = (Lookahead(params, o.lookahead_k, o.lookahead_alpha,
                         lookahead_every_step) if o.lookahead_k > 0 else None)
  count = 0

  def update():
    nonlocal count
    clip_by_global_norm_(params, o.clip_norm)
    for group in sgd.param_groups:
      group["lr"] = group["schedule"](count)
    sgd.step()
    sgd.zero_grad(set_to_none=True)
    if lookahead:
      lookahead.step()
    count += 1

  update.lookahead = lookahead
  return update


def _fast_path(params) -> dict:
  """torch.optim's keyword for its fastest kernels where `params` live."""
  return {"fused": True} if params[0].is_cuda else {"foreach": True}


VARIANTS = ("eager", "eager_channels_last", "compile", "compile_channels_last")


class Variant:
  """What a PyTorch user would set for `config` on `device` ("cpu",
  "cuda"): eager or `torch.compile`d (forward and, through AOTAutograd, its
  backward; optimisers run eagerly), contiguous (NCHW) or channels_last;
  on CUDA cuDNN's autotuner (`cudnn.benchmark`), and bf16 autocast when
  `model.dtype` is bfloat16 (float32 weights, as the JAX model keeps)."""

  def __init__(self, config, variant: str, device: str):
    if variant not in VARIANTS:
      raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    self.device = torch.device(device)
    self.compiled = variant.startswith("compile")
    self.memory_format = (torch.channels_last
                          if variant.endswith("channels_last")
                          else torch.contiguous_format)
    self.autocast = torch.autocast(
        self.device.type, dtype=torch.bfloat16,
        enabled=config.model.dtype == "bfloat16")
    if self.device.type == "cuda":
      torch.backends.cudnn.benchmark = True
    self.mean = torch.tensor([0.485, 0.456, 0.406],
                             device=self.device).view(1, 3, 1, 1) * 255
    self.std = torch.tensor([0.229, 0.224, 0.225],
                            device=self.device).view(1, 3, 1, 1) * 255

  def place(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(the model on the device in the memory format, what to call)."""
    model = model.to(self.device, memory_format=self.memory_format).train()
    return model, torch.compile(model) if self.compiled else model

  def pixels(self, images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] → normalised float32 [B, 3, H, W]."""
    x = (images.permute(0, 3, 1, 2).float() - self.mean) / self.std
    # The permuted NHWC batch has channels_last strides, and convs follow
    # their input's layout: without this copy "contiguous" would not be.
    return x.contiguous(memory_format=self.memory_format)


def make_step(config, variant: str = "eager", lookahead_every_step=True,
              device: str = "cpu"):
  """A `step(images uint8 [B, H, W, 3], ids int64 [B, L], mask int64 [B, L])
  -> loss` (a Python float, so the step has finished on the device)
  closure: one training step of the model, set up as `Variant` says. A
  compile failure (e.g. no C++ compiler) is raised at the first call.
  """
  setup = Variant(config, variant, device)
  model, forward = setup.place(CLIPLite(config))
  update = make_optimizer(model, config, lookahead_every_step)

  def step(images, input_ids, attention_mask):
    with setup.autocast:
      loss = forward(setup.pixels(images), input_ids, attention_mask,
                     config.loss.prior_weight)
    loss.backward()
    update()
    return loss.item()

  return step


class ViTClassifier(nn.Module):
  """transformers' `CLIPVisionModel` (its pooled output: the class token
  after post_layernorm) and a linear classifier: bench/image_tower.py's
  `Classifier` over a CLIP-shaped `vit.ViT`. float [B, 3, H, W] → logits
  [B, num_classes]."""

  def __init__(self, hf_config: dict, num_classes: int):
    from transformers import CLIPVisionConfig, CLIPVisionModel
    super().__init__()
    fields = {k: v for k, v in hf_config.items() if k != "model_type"}
    self.tower = CLIPVisionModel(CLIPVisionConfig(**fields))
    self.head = nn.Linear(fields["hidden_size"], num_classes)

  def forward(self, x):
    return self.head(self.tower(pixel_values=x).pooler_output)


def tower_optimizer(params, spec: tuple[str, dict]):
  """bench/image_tower.py's `OPTIMIZERS` entry in torch.optim (its decay
  as optax's: added to the gradient for SGD, decoupled for AdamW)."""
  kind, h = spec
  if kind == "sgd":
    return torch.optim.SGD(params, lr=h["lr"], momentum=h["momentum"],
                           weight_decay=h["weight_decay"],
                           **_fast_path(params))
  return torch.optim.AdamW(params, lr=h["lr"], betas=(h["b1"], h["b2"]),
                           eps=h["eps"], weight_decay=h["weight_decay"],
                           **_fast_path(params))


def make_image_tower_step(config, variant: str = "eager",
                          device: str = "cpu", num_classes: int = 1000, *,
                          optimizer: tuple[str, dict],
                          weights: dict | None = None,
                          hf_config: dict | None = None):
  """`step(images uint8 [B, H, W, 3], labels int64 [B]) -> loss` (a Python
  float): the image tower alone trained as an ImageNet classifier, the
  workload of published ResNet / ViT figures: the tower, a linear
  classifier, softmax cross-entropy and `optimizer` (`tower_optimizer`;
  bench/image_tower.py's `torch_setup` gives it and the next two).

  `config.model.image` a ResNet: this module's, PyTorch's initialisation.
  A ViT: `ViTClassifier(hf_config)` loaded (strictly) with `weights`, a
  state dict of float32 arrays: the JAX side's initial weights."""
  setup = Variant(config, variant, device)
  if config.model.image.get("name", "resnet") == "vit":
    if weights is None or hf_config is None:
      raise ValueError("a ViT tower needs hf_config and weights "
                       "(image_tower.torch_setup)")
    model = ViTClassifier(hf_config, num_classes)
    # Copies (torch.tensor): JAX's arrays come read-only.
    model.load_state_dict({k: torch.tensor(v) for k, v in weights.items()},
                          strict=True)
  else:
    tower = ResNet(config.model.image.depth, config.model.image.width)
    model = nn.Sequential(tower, nn.Linear(tower.num_features, num_classes))
  model, forward = setup.place(model)
  params = list(model.parameters())
  opt = tower_optimizer(params, optimizer)

  def step(images, labels):
    with setup.autocast:
      loss = F.cross_entropy(forward(setup.pixels(images)).float(), labels)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()

  return step
