"""Ring InfoNCE / SigLIP (`loss.gather="ring"`): the gathered losses'
values and gradients, with nothing gathered."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cliplite_jax import config_io, validation
from cliplite_jax.models import cliplite
from cliplite_jax.objectives import losses
from cliplite_jax.training import optim, parallel, state as state_lib, train
from conftest import REPO, xla_flags
from test_train import _random_batch

# Values and gradients, ring against gathered, on a mesh of N devices
# (fsdp F): {"loss": [relative error of the value, then of each gradient]}.
# The embeddings' gradients are compared relative to their largest entry;
# the scalars' (log-scale, bias) relative to the scale when that is larger:
# the log-scale's is a small difference of logits as large as the scale
# (Σ softmax · logit − the positive's), whose float32 rounding, ~1e-7 of
# the scale, both versions have.
# Run in-process for N ≤ 4, in a subprocess for 8.
_COMPARE = """
import json, sys
import jax, jax.numpy as jnp
from cliplite_jax.objectives import losses
from cliplite_jax.training import parallel

def compare(devices, fsdp, rows=6, dim=12, seed=0):
  mesh = parallel.make_mesh(devices, fsdp=fsdp)
  k1, k2 = jax.random.split(jax.random.key(seed))
  batch = rows * devices
  img = jax.random.normal(k1, (batch, dim))
  txt = jax.random.normal(k2, (batch, dim)) + 0.7 * img  # some alignment
  img, txt = (jax.device_put(x, parallel.batch_sharded(mesh))
              for x in (img, txt))
  log_scale, bias = jnp.log(jnp.float32(12.0)), jnp.float32(-2.5)
  cases = {
      "infonce": (losses.infonce, (img, txt, log_scale)),
      "sigmoid": (losses.sigmoid_pairwise, (img, txt, log_scale, bias))}
  errors = {}
  for name, (fn, args) in cases.items():
    argnums = tuple(range(len(args)))
    def run(ring):
      f = lambda *a: fn(*a, ring_mesh=mesh if ring else None)
      return jax.jit(jax.value_and_grad(f, argnums=argnums))(*args)
    (v_all, g_all), (v_ring, g_ring) = run(False), run(True)
    errors[name] = [abs(float(v_ring - v_all)) / abs(float(v_all))] + [
        float(jnp.max(jnp.abs(r - a))
              / jnp.maximum(jnp.max(jnp.abs(a)),
                            0.0 if a.ndim else jnp.exp(log_scale)))
        for r, a in zip(g_ring, g_all)]
  return errors
"""
_namespace = {}
exec(_COMPARE, _namespace)  # noqa: S102 - the same code as the subprocess's


@pytest.mark.parametrize("devices,fsdp", [(1, 1), (2, 1), (4, 1), (4, 2)])
def test_ring_equals_gathered_values_and_gradients(devices, fsdp):
  for seed in range(3):
    errors = _namespace["compare"](devices, fsdp, seed=seed)
    for name, relative in errors.items():
      assert max(relative) <= 1e-6, (name, seed, relative)


def test_ring_on_eight_devices():
  script = _COMPARE + "\nprint(json.dumps(compare(8, 2)))"
  result = subprocess.run([sys.executable, "-c", script], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ,
                               "XLA_FLAGS": xla_flags(8)})
  assert result.returncode == 0, result.stderr[-3000:]
  errors = json.loads(result.stdout.strip().splitlines()[-1])
  for name, relative in errors.items():
    assert max(relative) <= 1e-6, (name, relative)


def test_ring_block_is_the_gathered_loss_by_hand():
  """One device, two rows: the ring's SigLIP and InfoNCE against the
  formulas written out."""
  x = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
  y = np.array([[0.8, 0.6], [0.0, 1.0]], np.float32)
  s, b = 3.0, -1.0
  logits = s * x @ y.T
  log_sig = lambda z: -np.log1p(np.exp(-z))  # noqa: E731
  sig = -sum(log_sig((1 if i == j else -1) * (logits[i, j] + b))
             for i in range(2) for j in range(2)) / 2
  lse = lambda v: np.log(np.sum(np.exp(v)))  # noqa: E731
  nce = 0.5 * (np.mean([lse(logits[i]) - logits[i, i] for i in range(2)])
               + np.mean([lse(logits[:, j]) - logits[j, j] for j in range(2)]))
  mesh = parallel.make_mesh(1)
  log_s = jnp.log(jnp.float32(s))
  np.testing.assert_allclose(
      losses.sigmoid_pairwise(x, y, log_s, jnp.float32(b), ring_mesh=mesh),
      sig, rtol=1e-6)
  np.testing.assert_allclose(losses.infonce(x, y, log_s, ring_mesh=mesh),
                             nce, rtol=1e-6)


def test_ring_train_step_equals_the_gathered_step(tiny):
  """The whole step, on 4 devices × 2 micro-batches (feature-cached
  accumulation): the same metrics and the same updated weights. (The
  gathered step is test_accumulate's, compiled once for both; SigLIP's ring
  takes the same path, `losses.sigmoid_pairwise`; fsdp meshes are above.)"""
  loss = "infonce"
  tiny.loss.name, tiny.batch_size, tiny.accum_steps = loss, 32, 2
  mesh = parallel.make_mesh(4)
  model, tx = cliplite.build(tiny), optim.build(tiny)
  batch = parallel.shard_batch(
      _random_batch(tiny, np.random.default_rng(5)), mesh)
  results = {}
  for gather in ("all", "ring"):
    tiny.loss.gather = gather
    state = state_lib.init_sharded(tiny, model, tx, mesh)
    step = train.make_train_step(tiny, model, tx, mesh)
    new_state, metrics = step(state, batch)
    results[gather] = jax.device_get((new_state.trained_variables, metrics))
  (w_all, m_all), (w_ring, m_ring) = results["all"], results["ring"]
  assert f"loss/{loss}" in m_ring
  for key in m_all:
    np.testing.assert_allclose(m_ring[key], m_all[key], rtol=1e-6,
                               atol=1e-7, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               w_ring, w_all)


def test_ring_is_refused_for_objectives_that_gather_nothing(tiny):
  tiny.loss.gather = "ring"
  with pytest.raises(config_io.UserError,
                     match=r"loss.gather='ring' is for .*infonce.*; "
                           r"loss.name='jsd' gathers nothing"):
    validation.check_train(tiny, 4)
  tiny.loss.gather = "rings"
  with pytest.raises(config_io.UserError, match=r"loss.gather.*one of"):
    validation.check_train(tiny, 4)
  tiny.loss.name, tiny.loss.gather = "xclip", "ring"
  validation.check_train(tiny, 4)
