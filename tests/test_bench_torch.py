"""The PyTorch optimiser of bench/torch_cliplite.py against optax's.

The train-step benchmark compares JAX with PyTorch; the PyTorch step must
update weights as `cliplite_jax.training.optim.build` does (clipping, per-group
schedules, SGD with decay and momentum, optax's Lookahead), or the ratio
compares different work.
"""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")

from cliplite_jax import config_io  # noqa: E402

from cliplite_jax.training import optim

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))
import torch_cliplite  # noqa: E402


def tiny_config():
  """The demo's optimiser, shortened: 2 warmup steps, sync every 3, a clip
  norm the first steps' gradients exceed."""
  c = config_io.load_file(os.path.join(REPO, "configs", "default.py"))
  c.total_steps = 12
  c.optim.warmup_steps = 2
  c.optim.lookahead_k = 3
  c.optim.clip_norm = 1.0
  c.optim.weight_decay = 1e-2
  c.optim.lr = dict(image=0.2, text=0.1, other=0.05)
  return c


class Linear(torch.nn.Module):
  """Linear towers "image" and "text" [4 → 3] summed, a head [3 → 2]."""

  def __init__(self):
    super().__init__()
    self.image = torch.nn.Linear(4, 3, bias=False)
    self.text = torch.nn.Linear(4, 3, bias=False)
    self.head = torch.nn.Linear(3, 2)

  def forward(self, x):
    return self.head(self.image(x) + self.text(x))


def jax_loss(p, x, y):
  """Mean squared error of `Linear` on float32 x [N, 4], y [N, 2]."""
  h = x @ p["image_encoder"]["weight"].T + x @ p["text_encoder"]["weight"].T
  out = h @ p["head"]["weight"].T + p["head"]["bias"]
  return jnp.mean((out - y) ** 2)


@pytest.mark.parametrize("every_step", [True, False])
def test_lookahead_sgd_matches_optax(every_step):
  config = tiny_config()
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 4)).astype(np.float32)
  y = rng.normal(size=(8, 2)).astype(np.float32)

  torch.manual_seed(0)
  model = Linear()
  update = torch_cliplite.make_optimizer(model, config, every_step)
  names = {"image": "image_encoder", "text": "text_encoder", "head": "head"}

  def as_tree(named):
    tree = {}
    for name, value in named:
      module, leaf = name.split(".")
      tree.setdefault(names[module], {})[leaf] = jnp.asarray(
          value.detach().numpy())
    return tree

  tx = optim.build(config)
  initial = as_tree(model.named_parameters())
  params = optim.init_params(config, initial)
  opt_state = tx.init(params)
  step = jax.jit(lambda params, opt_state: _optax_step(tx, params, opt_state,
                                                       x, y))
  xt, yt = torch.from_numpy(x), torch.from_numpy(y)
  for i in range(9):  # three syncs, the last at the last step; LR warms up
    params, opt_state = step(params, opt_state)
    torch.nn.functional.mse_loss(model(xt), yt).backward()
    update()
    fast = as_tree(model.named_parameters())
    slow = as_tree(zip((n for n, _ in model.named_parameters()),
                       update.lookahead.slow))
    for ours, theirs in ((fast, params.fast), (slow, params.slow)):
      jax.tree.map(lambda a, b: np.testing.assert_allclose(
          a, b, rtol=1e-5, atol=1e-6, err_msg=f"step {i}"), ours, theirs)
  # The weights moved, and the last sync left fast = slow (to rounding).
  assert not np.allclose(params.fast["head"]["bias"], initial["head"]["bias"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               params.fast, params.slow)


def _optax_step(tx, params, opt_state, x, y):
  grads = jax.grad(jax_loss)(optim.model_params(params), x, y)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def test_schedule_matches_optim():
  config = tiny_config()
  for group, schedule in optim.schedules(config).items():
    ours = torch_cliplite.lr_schedule(config, config.optim.lr[group])
    np.testing.assert_allclose([ours(i) for i in range(14)],
                               [float(schedule(i)) for i in range(14)],
                               rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("tower", ["resnet", "vit"])
def test_tower_optimizers_match_optax(tower):
  """The image-tower bench's optimisers (bench/image_tower.py OPTIMIZERS:
  SGD for the ResNet, AdamW for the ViT) update as optax's do on both
  sides."""
  import image_tower  # bench/; imports JAX and flax
  spec = image_tower.OPTIMIZERS[tower]
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 4)).astype(np.float32)
  y = rng.normal(size=(8, 2)).astype(np.float32)
  torch.manual_seed(0)
  model = torch.nn.Linear(4, 2)
  opt = torch_cliplite.tower_optimizer(list(model.parameters()), spec)
  params = {"weight": jnp.asarray(model.weight.detach().numpy()),
            "bias": jnp.asarray(model.bias.detach().numpy())}
  tx = image_tower.optax_optimizer(spec)
  opt_state = tx.init(params)

  def loss(p):
    return jnp.mean((x @ p["weight"].T + p["bias"] - y) ** 2)

  @jax.jit
  def step(params, opt_state):
    updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  xt, yt = torch.from_numpy(x), torch.from_numpy(y)
  for i in range(5):
    params, opt_state = step(params, opt_state)
    torch.nn.functional.mse_loss(model(xt), yt).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    for name, value in params.items():
      np.testing.assert_allclose(getattr(model, name).detach().numpy(), value,
                                 rtol=1e-5, atol=1e-6,
                                 err_msg=f"{tower} step {i} {name}")
