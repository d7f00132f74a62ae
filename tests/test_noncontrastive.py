"""nCLIP's loss against NumPy written out term by term, and its gradient's
stop-gradient on the targets."""
import jax
import jax.numpy as jnp
import numpy as np

from cliplite_jax.objectives import noncontrastive


def _softmax(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _numpy_nclip(li, lt, ts, tt, w):
  k = li.shape[-1]
  p_i, p_t = _softmax(li / ts), _softmax(lt / ts)
  q_i, q_t = _softmax(li / tt), _softmax(lt / tt)
  cross = 0.5 * (np.mean(-(q_t * np.log(p_i)).sum(-1))
                 + np.mean(-(q_i * np.log(p_t)).sum(-1)))
  ent = lambda p: -(p * np.log(p)).sum()  # noqa: E731
  me = 0.5 * ((np.log(k) - ent(p_i.mean(0))) + (np.log(k) - ent(p_t.mean(0))))
  return cross + w * me


def test_nclip_matches_numpy():
  rng = np.random.default_rng(0)
  emb_i, emb_t, protos = (rng.normal(size=s) for s in ((6, 5), (6, 5), (9, 5)))
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
  li, lt = unit(emb_i) @ unit(protos).T, unit(emb_t) @ unit(protos).T
  got_li = noncontrastive.prototype_logits(jnp.asarray(emb_i, jnp.float32),
                                           jnp.asarray(protos, jnp.float32))
  np.testing.assert_allclose(got_li, li, rtol=1e-5, atol=1e-6)
  loss, metrics = noncontrastive.nclip_loss(
      jnp.asarray(li, jnp.float32), jnp.asarray(lt, jnp.float32), 0.1, 0.04,
      0.7)
  np.testing.assert_allclose(float(loss), _numpy_nclip(li, lt, 0.1, 0.04, 0.7),
                             rtol=1e-5)
  assert set(metrics) == {"loss/nclip", "nclip/cross_entropy", "nclip/me_max"}


def test_targets_carry_no_gradient():
  rng = np.random.default_rng(1)
  li, lt = (jnp.asarray(rng.normal(size=(4, 6)), jnp.float32) for _ in range(2))
  # Without the ME-MAX term, the text logits get gradient only through
  # p_T (predicting the image's target), not through q_T.
  grad_t = jax.grad(lambda t: noncontrastive.nclip_loss(li, t, 0.1, 0.04,
                                                        0.0)[0])(lt)
  q_i = jax.nn.softmax(li / 0.04)
  p_t = jax.nn.softmax(lt / 0.1)
  want = 0.5 * (p_t - q_i) / 0.1 / li.shape[0]
  np.testing.assert_allclose(grad_t, want, rtol=1e-4, atol=1e-6)


def test_uniform_batch_mean_has_no_me_max_penalty():
  # Each row a one-hot-ish assignment to a different prototype: p̄ uniform.
  li = jnp.eye(4, dtype=jnp.float32) * 10.0
  _, metrics = noncontrastive.nclip_loss(li, li, 1.0, 1.0, 1.0)
  assert float(metrics["nclip/me_max"]) < 1e-6
  collapsed = jnp.tile(jnp.asarray([[10.0, 0, 0, 0]], jnp.float32), (4, 1))
  _, metrics = noncontrastive.nclip_loss(collapsed, collapsed, 1.0, 1.0, 1.0)
  assert float(metrics["nclip/me_max"]) > 1.0
