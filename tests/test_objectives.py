"""The registry's new objectives against NumPy, how each runs on a mesh
(device-local ones per shard, global ones on the whole batch, nCLIP's batch
mean global everywhere), and the bf16 rule."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cliplite_jax import config_io, objectives

from cliplite_jax.training import guards, parallel, train
from test_noncontrastive import _numpy_nclip


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _softplus(x):
  return np.logaddexp(0.0, x)


def _numpy_jsd_mip(reps, log_scale):
  """Loop over anchors and rows, one MIP at a time."""
  reps = [_unit(r) for r in reps]
  s, n, m = np.exp(log_scale), len(reps[0]), len(reps)
  total = 0.0
  for a in range(m):
    pos = neg = 0.0
    for i in range(n):
      others = [k for k in range(m) if k != a]
      tup = [reps[k][i] if k == a else reps[k][(i + 1 + others.index(k)) % n]
             for k in range(m)]
      neg += _softplus(s * np.sum(np.prod(tup, axis=0)))
      pos += -_softplus(-s * np.sum(np.prod([r[i] for r in reps], axis=0)))
    total += neg / n - pos / n
  return total / m


def _numpy_infonce(x, y, log_scale):
  logits = _unit(x) @ _unit(y).T * np.exp(log_scale)

  def ce(z):
    z = z - z.max(1, keepdims=True)
    return -np.mean(np.diag(z) - np.log(np.exp(z).sum(1)))
  return 0.5 * (ce(logits) + ce(logits.T))


def _config(**nclip):
  c = ml_collections.ConfigDict()
  c.prior_weight = 0.1
  c.symile_sampling = "n"
  c.nclip = dict(student_temperature=0.1, teacher_temperature=0.04,
                 me_max_weight=0.5, weight=0.7, prototypes=6)
  c.nclip.update(nclip)
  return c


def _two_tower_outputs(rng, b=8, d=5, k=6):
  return {"img_emb": rng.normal(size=(b, d)).astype(np.float32),
          "txt_emb": rng.normal(size=(b, d)).astype(np.float32),
          "log_scale": np.float32(1.3),
          "img_proto_logits": rng.uniform(-1, 1, (b, k)).astype(np.float32),
          "txt_proto_logits": rng.uniform(-1, 1, (b, k)).astype(np.float32)}


def test_symile_lite_matches_a_loop_over_anchors_and_rows():
  rng = np.random.default_rng(0)
  reps = [rng.normal(size=(6, 4)).astype(np.float32) for _ in range(3)]
  loss, metrics = objectives.symile_lite_objective(
      {"embeddings": reps, "log_scale": jnp.float32(0.8)}, _config())
  np.testing.assert_allclose(float(loss), _numpy_jsd_mip(reps, 0.8), rtol=1e-5)
  assert float(metrics["temperature"]) == pytest.approx(np.exp(-0.8))


def test_pairwise_infonce_is_the_sum_over_pairs():
  rng = np.random.default_rng(1)
  reps = [rng.normal(size=(5, 4)).astype(np.float32) for _ in range(3)]
  loss, _ = objectives.pairwise_infonce_objective(
      {"embeddings": reps, "log_scale": jnp.float32(0.5)}, _config())
  want = sum(_numpy_infonce(reps[i], reps[j], 0.5)
             for i, j in ((0, 1), (0, 2), (1, 2)))
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_xclip_is_infonce_plus_weighted_nclip():
  out = _two_tower_outputs(np.random.default_rng(2))
  loss, metrics = objectives.xclip_objective(out, _config())
  nclip = _numpy_nclip(out["img_proto_logits"], out["txt_proto_logits"],
                       0.1, 0.04, 0.5)
  want = _numpy_infonce(out["img_emb"], out["txt_emb"], 1.3) + 0.7 * nclip
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["loss/nclip"]), nclip, rtol=1e-5)


def _on_mesh(name, outputs, config, mesh):
  full = ml_collections.ConfigDict({"loss": dict(config, name=name)})
  sharded = jax.device_put(outputs, jax.tree.map(
      lambda x: parallel.batch_sharded(mesh) if np.ndim(x)
      else parallel.replicated(mesh), outputs))
  return jax.jit(train.make_objective(full, mesh))(sharded)


def test_jsd_nclip_rolls_per_device_but_takes_nclip_over_the_batch():
  """On 4 devices: the JSD term is each quarter's (the roll stays in the
  shard), the nCLIP term the whole batch's (one [K] all-reduce)."""
  mesh = parallel.make_mesh(4)
  cfg = _config()
  cfg.prior_weight = 0.0  # no prior outputs here
  out = _two_tower_outputs(np.random.default_rng(3), b=16)
  loss, metrics = _on_mesh("jsd_nclip", out, cfg, mesh)
  quarters = [objectives.losses.jsd_bound(
      out["img_emb"][i:i + 4], out["txt_emb"][i:i + 4], out["log_scale"])[0]
      for i in range(0, 16, 4)]
  nclip = _numpy_nclip(out["img_proto_logits"], out["txt_proto_logits"],
                       0.1, 0.04, 0.5)
  np.testing.assert_allclose(float(metrics["loss/jsd"]), np.mean(quarters),
                             rtol=1e-5)
  np.testing.assert_allclose(float(metrics["loss/nclip"]), nclip, rtol=1e-5)
  np.testing.assert_allclose(float(loss), np.mean(quarters) + 0.7 * nclip,
                             rtol=1e-5)
  # Each device's own batch mean would give another ME-MAX term.
  local = np.mean([_numpy_nclip(out["img_proto_logits"][i:i + 4],
                                out["txt_proto_logits"][i:i + 4],
                                0.1, 0.04, 0.5) for i in range(0, 16, 4)])
  assert abs(local - nclip) > 1e-3


@pytest.mark.parametrize("name", ["symile", "pairwise_infonce", "nclip"])
def test_global_objectives_do_not_depend_on_the_device_count(name):
  rng = np.random.default_rng(4)
  if name == "nclip":
    out = _two_tower_outputs(rng, b=16)
  else:
    out = {"embeddings": [rng.normal(size=(16, 4)).astype(np.float32)
                          for _ in range(3)],
           "log_scale": np.float32(0.4), "loss_key": jax.random.key(7)}
  one = _on_mesh(name, out, _config(), parallel.make_mesh(1))[0]
  four = _on_mesh(name, out, _config(), parallel.make_mesh(4))[0]
  np.testing.assert_allclose(float(four), float(one), rtol=1e-5)


def test_symile_lite_rolls_within_each_device():
  rng = np.random.default_rng(5)
  reps = [rng.normal(size=(16, 4)).astype(np.float32) for _ in range(3)]
  out = {"embeddings": reps, "log_scale": np.float32(0.4)}
  loss, _ = _on_mesh("symile_lite", out, _config(), parallel.make_mesh(4))
  want = np.mean([_numpy_jsd_mip([r[i:i + 4] for r in reps], 0.4)
                  for i in range(0, 16, 4)])
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)


@pytest.mark.parametrize("name", ["nclip", "xclip", "jsd_nclip", "symile",
                                  "symile_lite", "pairwise_infonce"])
def test_losses_are_float32_from_bfloat16_embeddings(name):
  rng = np.random.default_rng(6)
  if objectives.OBJECTIVES[name].multimodal:
    out = {"embeddings": [jnp.asarray(rng.normal(size=(8, 4)), jnp.bfloat16)
                          for _ in range(3)],
           "log_scale": jnp.float32(0.4), "loss_key": jax.random.key(0)}
  else:
    out = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16),
                       _two_tower_outputs(rng))
    out["log_scale"] = jnp.float32(1.3)
  cfg = _config()
  cfg.prior_weight = 0.0
  loss, metrics = objectives.OBJECTIVES[name].fn(out, cfg)
  assert loss.dtype == jnp.float32
  assert all(jnp.asarray(v).dtype == jnp.float32 for v in metrics.values())


def test_resuming_ignores_fields_only_other_objectives_read(tmp_path):
  """A run saved before `loss.nclip` existed resumes; an nCLIP run does
  not resume with another K."""
  from configs import default
  saved = default.get_config()
  del saved.loss["nclip"]
  config_io.save(saved, str(tmp_path))
  guards.check_config_change(default.get_config(), str(tmp_path), False)
  nclip = default.get_config()
  nclip.loss.name = "nclip"
  config_io.save(nclip, str(tmp_path))
  nclip.loss.nclip.prototypes = 64
  with pytest.raises(config_io.UserError, match="loss.nclip.prototypes"):
    guards.check_config_change(nclip, str(tmp_path), False)


@pytest.mark.parametrize("name", [n for n, o in objectives.OBJECTIVES.items()
                                  if not o.multimodal])
def test_the_model_carries_what_the_objective_row_asks_for(tiny, name):
  """The model reads its extra parameters off the objective's registry row
  (a logit bias, prototypes, prior discriminators), never its name."""
  from cliplite_jax.training import state as state_lib
  from cliplite_jax.models import cliplite
  tiny.loss.name = name
  row = objectives.OBJECTIVES[name]
  model = cliplite.build(tiny)
  shapes = jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0),
                          "prior": jax.random.key(1),
                          "dropout": jax.random.key(2)},
                         *state_lib.dummy_inputs(tiny), train=False))
  params = shapes["params"]
  assert ("logit_bias" in params) == row.logit_bias
  if row.logit_bias:
    assert params["logit_bias"].shape == ()
  assert ("prototypes" in params) == row.prototypes
  assert any("prior" in k for k in params) == (
      row.priors and tiny.loss.prior_img)
