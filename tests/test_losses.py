"""Losses against independent NumPy implementations of REFERENCE.md's formulas."""
import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cliplite_jax.objectives import losses


def _np_softplus(x):
  return np.logaddexp(0.0, x)


def _np_critic(x, y, t):
  """T(x, y) for one pair, written out with explicit norms."""
  return float(np.dot(x, y) / (np.sqrt(np.dot(x, x)) * np.sqrt(np.dot(y, y)))
               * math.exp(t))


def _np_jsd(img, txt, t):
  """Loop form of E_marginal − E_joint with the negative y_{(i+1) mod B}."""
  b = len(img)
  joint = [-_np_softplus(-_np_critic(img[i], txt[i], t)) for i in range(b)]
  marginal = [_np_softplus(_np_critic(img[i], txt[(i + 1) % b], t))
              for i in range(b)]
  return np.mean(marginal) - np.mean(joint), np.mean(joint), np.mean(marginal)


@pytest.mark.parametrize("batch,dim,t", [(8, 16, math.log(1 / 0.07)),
                                         (5, 3, 0.0), (2, 64, 3.0)])
def test_jsd_bound_matches_numpy(batch, dim, t):
  rng = np.random.default_rng(batch)
  img = rng.normal(size=(batch, dim)) * rng.uniform(0.1, 10)
  txt = rng.normal(size=(batch, dim))
  loss, metrics = losses.jsd_bound(jnp.asarray(img, jnp.float32),
                                   jnp.asarray(txt, jnp.float32),
                                   jnp.float32(t))
  expected, e_joint, e_marginal = _np_jsd(img, txt, t)
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(metrics["jsd/e_joint"], e_joint, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(metrics["jsd/e_marginal"], e_marginal, rtol=1e-5,
                             atol=1e-5)


def test_jsd_bound_uses_next_caption_as_negative():
  """With orthogonal one-hot embeddings only pair (i, i+1) may score."""
  img = np.eye(4, dtype=np.float32)
  # Caption i+1 equals image i: every negative is a perfect match.
  txt = np.roll(img, 1, axis=0)
  loss, metrics = losses.jsd_bound(img, txt, jnp.float32(0.0))
  # joint scores are all 0, marginal scores all exp(0) * 1 = 1.
  np.testing.assert_allclose(metrics["jsd/e_joint"], -math.log(2), rtol=1e-6)
  np.testing.assert_allclose(metrics["jsd/e_marginal"], math.log1p(math.e),
                             rtol=1e-6)


def test_prior_loss_matches_numpy_and_is_stable():
  rng = np.random.default_rng(0)
  real, noise = rng.normal(size=7) * 3, rng.normal(size=5) * 3
  sigmoid = lambda z: 1 / (1 + np.exp(-z))
  expected = -(np.mean(np.log(sigmoid(noise)))
               + np.mean(np.log(1 - sigmoid(real))))
  np.testing.assert_allclose(losses.prior_loss(real, noise), expected,
                             rtol=1e-5)
  # Far outside float32 sigmoid's range the log-sigmoid form stays exact:
  # log(1 − σ(200)) = −200, log σ(−150) = −150.
  big = losses.prior_loss(jnp.array([200.0]), jnp.array([-150.0]))
  np.testing.assert_allclose(big, 350.0, rtol=1e-6)


def test_cliplite_objective_combines_terms_with_weight():
  rng = np.random.default_rng(1)
  outputs = {
      "img_emb": rng.normal(size=(6, 8)).astype(np.float32),
      "txt_emb": rng.normal(size=(6, 8)).astype(np.float32),
      "log_scale": np.float32(2.0),
      "prior_img_real": rng.normal(size=6).astype(np.float32),
      "prior_img_noise": rng.normal(size=6).astype(np.float32),
      "prior_txt_real": rng.normal(size=6).astype(np.float32),
      "prior_txt_noise": rng.normal(size=6).astype(np.float32),
  }
  cfg = ml_collections.ConfigDict({"prior_weight": 0.1})
  total, metrics = losses.cliplite_objective(outputs, cfg)
  jsd = _np_jsd(outputs["img_emb"], outputs["txt_emb"], 2.0)[0]

  def np_prior(real, noise):
    """−(mean log D(noise) + mean log(1 − D(real))), D = sigmoid, directly."""
    d_noise = 1.0 / (1.0 + np.exp(-noise.astype(np.float64)))
    d_real = 1.0 / (1.0 + np.exp(-real.astype(np.float64)))
    return -(np.mean(np.log(d_noise)) + np.mean(np.log(1.0 - d_real)))

  prior_img = np_prior(outputs["prior_img_real"], outputs["prior_img_noise"])
  prior_txt = np_prior(outputs["prior_txt_real"], outputs["prior_txt_noise"])
  np.testing.assert_allclose(metrics["loss/prior_img"], prior_img, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss/prior_txt"], prior_txt, rtol=1e-5)
  expected = 0.9 * jsd + 0.1 * (prior_img + prior_txt)
  np.testing.assert_allclose(total, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss/jsd"], jsd, rtol=1e-5)
  np.testing.assert_allclose(metrics["temperature"], math.exp(-2.0), rtol=1e-6)
  for key in ("loss/total", "loss/jsd", "loss/prior_img", "loss/prior_txt"):
    assert key in metrics


def test_infonce_and_sigmoid_match_numpy():
  rng = np.random.default_rng(2)
  img, txt = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
  t, bias = 1.5, -2.0
  n = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  logits = n(img) @ n(txt).T * math.exp(t)
  log_softmax = lambda z: z - np.log(np.exp(z).sum(axis=1, keepdims=True))
  expected = -0.5 * (np.mean(np.diag(log_softmax(logits)))
                     + np.mean(np.diag(log_softmax(logits.T))))
  np.testing.assert_allclose(
      losses.infonce(img, txt, jnp.float32(t)), expected, rtol=1e-5)
  z = logits + bias
  signs = 2 * np.eye(5) - 1
  expected_sig = -np.sum(np.log(1 / (1 + np.exp(-signs * z)))) / 5
  np.testing.assert_allclose(
      losses.sigmoid_pairwise(img, txt, jnp.float32(t), jnp.float32(bias)),
      expected_sig, rtol=1e-5)


def test_concat_critic_is_the_references_mlp_rolled_within_each_device():
  """CLIP-Lite's concat critic (its `GlobalDiscriminator`: Linear(d_x + d_y
  → 512), ReLU, Linear(512 → 512), ReLU, Linear(512 → 1) on the
  concatenated features) as a torch MLP with our weights; the JSD on 4
  devices is the mean of each device's bound, negatives rolled within it."""
  import jax
  import torch
  from cliplite_jax.models import heads
  from cliplite_jax.training import parallel
  rng = np.random.default_rng(0)
  img = rng.normal(size=(16, 12)).astype(np.float32)
  txt = rng.normal(size=(16, 7)).astype(np.float32)
  critic = heads.ConcatCritic(heads.CONCAT_WIDTHS)
  params = critic.init(jax.random.key(0), img, txt)["params"]
  half_x, half_y, joint = critic.apply({"params": params}, img, txt)
  p = jax.tree.map(lambda a: torch.from_numpy(np.array(a)), params)
  mlp = torch.nn.Sequential(torch.nn.Linear(19, 512), torch.nn.ReLU(),
                            torch.nn.Linear(512, 512), torch.nn.ReLU(),
                            torch.nn.Linear(512, 1))
  with torch.no_grad():
    mlp[0].weight.copy_(torch.cat([p["image_in"]["kernel"],
                                   p["text_in"]["kernel"]]).T)
    mlp[0].bias.copy_(p["image_in"]["bias"])
    mlp[2].weight.copy_(p["tail"]["dense0"]["kernel"].T)
    mlp[2].bias.copy_(p["tail"]["dense0"]["bias"])
    mlp[4].weight.copy_(p["tail"]["logit"]["kernel"].T)
    mlp[4].bias.copy_(p["tail"]["logit"]["bias"])

  def torch_scores(x, y):
    with torch.no_grad():
      return mlp(torch.cat([torch.from_numpy(x), torch.from_numpy(y)],
                           dim=1))[:, 0].numpy()

  np.testing.assert_allclose(joint, torch_scores(img, txt), rtol=1e-5,
                             atol=1e-5)
  # torch's init: U(±1/√(d_x + d_y)) for the whole first layer.
  assert np.abs(np.asarray(params["image_in"]["kernel"])).max() <= 19**-0.5
  outputs = {"cross_a": half_x, "cross_b": half_y, "cross_joint": joint,
             "replicated": {"cross_tail": params["tail"]}}
  sharded = parallel.device_local(lambda o: losses.pair_jsd(o, "cross"),
                                  parallel.make_mesh(4))
  loss, metrics = jax.jit(sharded)(outputs)
  want = []
  for quarter in range(4):
    rows = slice(4 * quarter, 4 * quarter + 4)
    x, y = img[rows], txt[rows]
    e_joint = np.mean(-_np_softplus(-torch_scores(x, y)))
    e_marginal = np.mean(_np_softplus(torch_scores(x, np.roll(y, -1, 0))))
    want.append(e_marginal - e_joint)
  np.testing.assert_allclose(float(loss), np.mean(want), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["loss/jsd"]), np.mean(want),
                             rtol=1e-5)


def test_concat_critic_gradients_reach_its_replicated_parameters():
  """The critic's tail parameters go into each device's objective whole
  (outputs["replicated"]): their gradient through the 4-device
  `device_local` equals that of the mean of the four quarters' bounds."""
  import jax
  from cliplite_jax.models import heads
  from cliplite_jax.training import parallel
  rng = np.random.default_rng(1)
  img = rng.normal(size=(16, 12)).astype(np.float32)
  txt = rng.normal(size=(16, 7)).astype(np.float32)
  critic = heads.ConcatCritic(heads.CONCAT_WIDTHS)
  params = critic.init(jax.random.key(0), img, txt)["params"]

  def outputs(p, rows):
    half_x, half_y, joint = critic.apply({"params": p}, img[rows], txt[rows])
    return {"cross_a": half_x, "cross_b": half_y, "cross_joint": joint,
            "replicated": {"cross_tail": p["tail"]}}

  bound = lambda o: losses.pair_jsd(o, "cross")  # noqa: E731
  sharded = parallel.device_local(bound, parallel.make_mesh(4))
  got = jax.jit(jax.grad(
      lambda p: sharded(outputs(p, slice(None)))[0]))(params)
  want = jax.grad(lambda p: sum(
      bound(outputs(p, slice(4 * q, 4 * q + 4)))[0] for q in range(4)) / 4)(
          params)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert float(np.abs(w).max()) > 0
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6 * float(
        np.abs(w).max()))
