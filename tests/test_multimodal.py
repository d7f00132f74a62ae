"""The M-modality model's shapes and its loss's gradient path."""
import jax
import jax.numpy as jnp

from cliplite_jax import symile
from cliplite_jax.models import multimodal


def test_three_mlp_towers_train_with_symile():
  model = multimodal.MultiModal(
      modalities=("a", "b", "c"),
      towers=[multimodal.MLPTower((8,)) for _ in range(3)], embed_dim=16,
      init_log_scale=-0.3)
  inputs = {m: jnp.ones((4, 5)) * i for i, m in enumerate("abc", 1)}
  variables = model.init(jax.random.key(0), inputs)
  out = model.apply(variables, inputs)
  assert [e.shape for e in out["embeddings"]] == [(4, 16)] * 3
  assert abs(float(out["log_scale"]) + 0.3) < 1e-6

  def loss(params):
    out = model.apply({"params": params}, inputs)
    return symile.symile_loss(out["embeddings"], out["log_scale"], "n",
                              jax.random.key(1))

  grads = jax.grad(loss)(variables["params"])
  # Every parameter gets a finite, non-zero gradient.
  for leaf in jax.tree.leaves(grads):
    assert bool(jnp.all(jnp.isfinite(leaf))) and float(jnp.abs(leaf).max()) > 0
  assert set(grads) == {"towers_0", "towers_1", "towers_2", "a_head",
                        "b_head", "c_head", "log_scale"}
