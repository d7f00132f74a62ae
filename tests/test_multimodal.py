"""The M-modality model's shapes and its loss's gradient path; training
and scoring it on the XOR set."""
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cliplite_jax import config_io, run_dir
from cliplite_jax.data import symile_xor
from cliplite_jax.models import multimodal
from cliplite_jax.objectives import symile
from cliplite_jax.training import train
from conftest import REPO


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


@pytest.fixture(scope="module")
def xor_data_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("xor"))
  symile_xor.prepare(data_dir, "tiny")
  return data_dir


def _xor_config(data_dir, loss="symile"):
  c = config_io.load_file(f"{REPO}/configs/symile_xor.py:loss={loss}")
  c.data.name = "symile_xor/tiny"
  c.data.data_dir = data_dir
  c.data.num_threads = 0
  c.batch_size, c.total_steps = 64, 160
  c.log_every_steps, c.checkpoint_every_steps = 40, 80
  c.eval.batch_size = 64
  return c


def test_symile_learns_xor_where_pairwise_clip_cannot(xor_data_dir, tmp_path):
  """The sharded step on 4 devices, the in-memory vector pipeline and the
  zero-shot probe, end to end on 256 XOR triples (p = 1): Symile's MIP
  predicts each modality from the other two; CLIP on every pair cannot
  (each pair is independent), so it stays near chance (1/32)."""
  symile = train.train_and_evaluate(_xor_config(xor_data_dir),
                                    str(tmp_path / "symile"))
  pairwise = train.train_and_evaluate(
      _xor_config(xor_data_dir, "pairwise_infonce"), str(tmp_path / "pairs"))
  for m in ("a_from_b+c", "b_from_a+c", "c_from_a+b"):
    assert symile[f"zeroshot/symile_xor/{m}"] > 0.9, symile
    assert pairwise[f"zeroshot/symile_xor/{m}"] < 0.2, pairwise


def test_multimodal_resume_is_bit_exact(xor_data_dir, tmp_path, capsys):
  """Resumed from its step-80 checkpoint (the step-160 one removed), a run
  ends on the same weights: the data order and the O(N) negatives are
  functions of the step."""
  straight = tmp_path / "straight"
  config = _xor_config(xor_data_dir)
  config.eval.probes = ()
  train.train_and_evaluate(config, str(straight))
  resumed = tmp_path / "resumed"
  shutil.copytree(straight, resumed)
  shutil.rmtree(resumed / "checkpoints" / "160")
  capsys.readouterr()
  train.train_and_evaluate(config, str(resumed))
  assert "resuming from step 80" in capsys.readouterr().out
  weights = [run_dir.restore(str(w), config, 160)[2]["params"]
             for w in (straight, resumed)]
  jax.tree.map(np.testing.assert_array_equal, *weights)


def test_wrong_objective_or_feature_is_one_clear_error(xor_data_dir, tmp_path):
  config = _xor_config(xor_data_dir, "symile")
  config.loss.name = "jsd"
  with pytest.raises(config_io.UserError, match="does not train the multi"):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  config = _xor_config(xor_data_dir)
  config.model.towers.c.input_dim = 7
  with pytest.raises(config_io.UserError, match="input_dim is 7"):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_top1_counts_ties_and_nan_as_wrong():
  from cliplite_jax.probes import modalities
  candidates = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
  query = [jnp.asarray([[1.0, 0.0], [0.0, 1.0], [jnp.nan, 1.0]])]
  # Row 0: candidate 0 wins alone; row 1: candidates 1 and 2 tie; row 2:
  # NaN scores.
  targets = jnp.asarray([0, 1, 2], jnp.int32)
  for score in ("mip", "pairwise"):
    assert float(modalities.top1(query, candidates, targets, score)) == (
        pytest.approx(1 / 3))
