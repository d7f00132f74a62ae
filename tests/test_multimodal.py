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
  config = _xor_config(xor_data_dir)
  # Symile's evaluation: 1 + 9 candidates, a bootstrap interval.
  config.eval.candidates, config.eval.bootstrap = 10, 200
  symile = train.train_and_evaluate(config, str(tmp_path / "symile"))
  pairwise = train.train_and_evaluate(
      _xor_config(xor_data_dir, "pairwise_infonce"), str(tmp_path / "pairs"))
  for m in ("a_from_b+c", "b_from_a+c", "c_from_a+b"):
    key = f"zeroshot/symile_xor/{m}"
    among_10 = f"{key}_of10"  # the setting is in the key
    assert symile[among_10] > 0.9, symile
    assert key not in symile
    assert (symile[f"{among_10}_ci_low"] <= symile[among_10]
            <= symile[f"{among_10}_ci_high"])
    assert symile[f"{among_10}_ci_high"] - symile[f"{among_10}_ci_low"] < 0.2
    assert symile[f"{among_10}_ci_resamples"] == 200
    assert pairwise[key] < 0.2, pairwise
    assert f"{key}_ci_low" not in pairwise
  from cliplite_jax import evaluate
  config.eval.candidates = 33
  _, model, variables, tokenizer, mesh = run_dir.restore(
      str(tmp_path / "symile"), config)
  with pytest.raises(config_io.UserError, match=r"eval.candidates=33: 33 "
                     r"candidates per query, but only \d+ distinct values of "
                     r"a in symile_xor"):
    evaluate.run_probes(config, model, variables, tokenizer, mesh)


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
  config = _xor_config(xor_data_dir)
  config.model.missing = "indicator"  # on a set with no missing values
  with pytest.raises(config_io.UserError, match="model.missing='indicator' "
                     "reads each modality's <m>_missing flag, but "
                     "symile_xor/tiny has none"):
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


def test_n_candidates_and_bootstrap_intervals_match_numpy():
  """Top-1 among the target and K drawn others, by hand in NumPy, and the
  bootstrap's percentile interval against NumPy's own resampling."""
  from cliplite_jax.probes import modalities
  rng = np.random.default_rng(0)
  query = [rng.normal(size=(300, 8)).astype(np.float32) for _ in range(2)]
  candidates = rng.normal(size=(32, 8)).astype(np.float32)
  targets = rng.integers(0, 32, 300).astype(np.int32)
  negatives = modalities.draw_negatives(targets, 32, 9, seed=3)
  assert negatives.shape == (300, 9)
  for row, target in zip(negatives, targets):
    assert len(set(row)) == 9 and target not in row and row.max() < 32
  # Every other value is drawn about equally often: value v competes in
  # 9/31 of the rows whose target is not v.
  drawn = np.bincount(negatives.ravel(), minlength=32)
  eligible = 300 - np.bincount(targets, minlength=32)
  np.testing.assert_allclose(drawn / eligible, 9 / 31, atol=0.12)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
  scores = np.einsum("nd,nd,cd->nc", unit(query[0]), unit(query[1]),
                     unit(candidates))  # Symile's MIP of unit vectors
  true = scores[np.arange(300), targets]
  want = np.array([np.all(scores[n, negatives[n]] < true[n])
                   for n in range(300)])
  got = np.asarray(modalities.correct_rows(
      [jnp.asarray(q) for q in query], jnp.asarray(candidates),
      jnp.asarray(targets), "mip", jnp.asarray(negatives)))
  np.testing.assert_array_equal(got, want)
  # Among all 32 the same rows can only do worse.
  every = np.asarray(modalities.correct_rows(
      [jnp.asarray(q) for q in query], jnp.asarray(candidates),
      jnp.asarray(targets), "mip"))
  assert not np.any(every & ~got) and every.mean() < got.mean()
  low, high = modalities.bootstrap_interval(got, 2000, seed=(5, 0))
  boot = np.random.default_rng((5, 0))
  means = [got[boot.integers(0, 300, 300)].mean() for _ in range(2000)]
  assert (low, high) == tuple(np.percentile(means, [2.5, 97.5]))
  assert low < got.mean() < high
  # About the normal approximation's ±1.96 standard errors.
  se = np.sqrt(got.mean() * (1 - got.mean()) / 300)
  assert high - low == pytest.approx(2 * 1.96 * se, rel=0.15)
  with pytest.raises(ValueError, match="only 32 distinct values"):
    modalities.draw_negatives(targets, 32, 32, seed=0)


def test_missingness_indicator_is_a_learned_embedding_beside_the_values():
  """With model.missing="indicator", a tower's input is the values (zeros
  where missing) and row `flag` of a learned [2, d] table; computed here by
  hand for the one-affine-map towers of the XOR config."""
  model = multimodal.MultiModal(
      modalities=("a", "b"), towers=[multimodal.MLPTower(()) for _ in "ab"],
      embed_dim=4, missing="indicator")
  rng = np.random.default_rng(0)
  inputs = {"a": rng.normal(size=(6, 5)).astype(np.float32),
            "b": rng.normal(size=(6, 5)).astype(np.float32),
            "a_missing": np.array([[0], [1], [0], [1], [0], [0]], np.float32)}
  variables = model.init(jax.random.key(0), inputs)
  params = variables["params"]
  got = model.apply(variables, inputs)["embeddings"]
  for m, emb in zip("ab", got):
    flag = inputs.get(f"{m}_missing", np.zeros((6, 1))).astype(int)[:, 0]
    x = np.concatenate([inputs[m] * (1 - flag)[:, None],
                        np.asarray(params[f"{m}_missing_embedding"])[flag]],
                       axis=1)
    head = params[f"{m}_head"]
    np.testing.assert_allclose(emb, x @ head["kernel"] + head["bias"],
                               rtol=1e-5, atol=1e-6)
  # Without flags every row is observed; the zeros variant has no table.
  zeros = multimodal.MultiModal(
      modalities=("a", "b"), towers=[multimodal.MLPTower(()) for _ in "ab"],
      embed_dim=4)
  assert "a_missing_embedding" not in zeros.init(jax.random.key(0),
                                                 inputs)["params"]


def test_training_with_missing_values_reads_the_flags(tmp_path):
  """The tiny XOR set with half of each modality missing trains through the
  sharded step with the flags in the batch, and is scored on its complete
  test examples."""
  data_dir = str(tmp_path / "xor")
  symile_xor.prepare(data_dir, "tiny_m50")
  config = _xor_config(data_dir)
  config.data.name = "symile_xor/tiny_m50"
  config.model.missing = "indicator"
  from cliplite_jax.data import pipeline
  batch = next(iter(pipeline.train_dataset(config, None)))
  assert set(batch) >= {"a", "b", "c", "a_missing", "b_missing", "c_missing"}
  flags = np.concatenate([batch[f"{m}_missing"] for m in "abc"])
  assert 0.3 < flags.mean() < 0.7
  for m in "abc":
    gone = batch[f"{m}_missing"][:, 0] > 0
    assert not batch[m][gone].any()  # zeros where missing
  metrics = train.train_and_evaluate(config, str(tmp_path / "run"))
  for m in ("a_from_b+c", "b_from_a+c", "c_from_a+b"):
    assert 0 <= metrics[f"zeroshot/symile_xor/{m}"] <= 1
