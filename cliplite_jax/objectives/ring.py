"""InfoNCE and SigLIP over the global batch without gathering it: a ring.

Each device keeps its own rows. Text shards travel round the devices with a
collective permute; at each hop a device scores its images against the
visiting shard (a b × b block of logits, b = B / devices) and folds the block
into running sums, so no device holds more than one block at a time (the
chunked implementation of the SigLIP paper, Zhai et al., 2023). The backward pass is a
second ring: the text shards travel again, recomputing their blocks, and
carry the gradient of the text embeddings home with them. Nothing of size B
is kept between the passes, so the loss's memory per device is O(b² + b·D)
whatever the number of devices, where the gathered losses (`losses.infonce`,
`losses.sigmoid_pairwise`) hold every embedding and a [b, B] block.

Both return the same loss, and the same gradients, as the gathered versions
up to float32 summation order.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from cliplite_jax.training import parallel

AXES = parallel.BATCH  # every device is one hop of the ring


def _pass_on(tree, devices: int):
  """Each device's `tree` to the device before it: after k hops, device d
  holds what device (d + k) mod devices started with."""
  if devices == 1:
    return tree  # one block: nothing to pass
  perm = [(i, (i - 1) % devices) for i in range(devices)]
  return jax.tree.map(lambda x: jax.lax.ppermute(x, AXES, perm), tree)


def _ring(body, carry, travelling, devices: int):
  """Runs `body(hop, carry, travelling) -> (carry, travelling)` at hops
  0 .. devices − 1, passing `travelling` on after each hop, `devices`
  passes in all, so that it ends on the device it started on (with what
  was accumulated for that device's rows). After k passes device d holds
  device (d + k) mod devices's values: hop 0 is each device's own shard
  (its pairs' diagonal). (The last pass need only carry what is
  accumulated, not the captions themselves: 2 · b · D bytes a step left
  to save.)"""
  def hop(k, state):
    carry, travelling = body(k, *state)
    return carry, _pass_on(travelling, devices)
  return jax.lax.fori_loop(0, devices, hop, _varying((carry, travelling)))


def _varying(tree):
  """`tree` typed as differing between devices (as the loop's results do)."""
  def cast(x):
    varying = jax.typeof(x).manual_axis_type.varying
    missing = tuple(axis for axis in AXES if axis not in varying)
    return jax.lax.pcast(x, missing, to="varying") if missing else x
  return jax.tree.map(cast, tree)


# --- SigLIP ----------------------------------------------------------------

def _sigmoid_block(x, y, scale, bias, diagonal):
  """Cosines [b, b], the ±1 labels and the logits of one block."""
  cosines = x @ y.T
  labels = jnp.where(diagonal, 2.0 * jnp.eye(x.shape[0]) - 1.0, -1.0)
  return cosines, labels, scale * cosines + bias


def _sigmoid_local(devices, x, y, scale, bias):
  """This device's part of SigLIP's sum: −Σ_ij log σ(z_ij l_ij) over its
  image rows i [b, D] and every caption j, float32 []. x, y: unit rows of
  this device, float32 [b, D]; scale, bias: float32 [] (typed per device).
  A custom_vjp (`_sigmoid_local_bwd`) keeps nothing of size B."""
  def body(k, total, y_k):
    _, labels, logits = _sigmoid_block(x, y_k, scale, bias, k == 0)
    return total - jnp.sum(jax.nn.log_sigmoid(labels * logits)), y_k
  total, _ = _ring(body, jnp.zeros((), jnp.float32), y, devices)
  return total


def _sigmoid_local_fwd(devices, x, y, scale, bias):
  """The value, and the residuals: only this device's inputs."""
  return _sigmoid_local(devices, x, y, scale, bias), (x, y, scale, bias)


def _sigmoid_local_bwd(devices, residuals, g):
  """Gradients (dx [b, D], dy [b, D], dscale [], dbias []) for cotangent g
  of this device's part: each block recomputed as the captions travel
  again, their gradient travelling with them back home."""
  x, y, scale, bias = residuals

  def body(k, grads, travelling):
    dx, dscale, dbias = grads
    y_k, dy_k = travelling
    cosines, labels, logits = _sigmoid_block(x, y_k, scale, bias, k == 0)
    # d/dl of −log σ(z·l) is −z·σ(−z·l).
    dlogits = -g * labels * jax.nn.sigmoid(-labels * logits)
    return ((dx + scale * dlogits @ y_k,
             dscale + jnp.sum(dlogits * cosines), dbias + jnp.sum(dlogits)),
            (y_k, dy_k + scale * dlogits.T @ x))

  zero = jnp.zeros((), jnp.float32)
  (dx, dscale, dbias), (_, dy) = _ring(
      body, (jnp.zeros_like(x), zero, zero), (y, jnp.zeros_like(y)), devices)
  return dx, dy, dscale, dbias


_sigmoid_local = jax.custom_vjp(_sigmoid_local, nondiff_argnums=(0,))
_sigmoid_local.defvjp(_sigmoid_local_fwd, _sigmoid_local_bwd)


# --- InfoNCE ---------------------------------------------------------------

def _online_logsumexp(state, logits, axis):
  """Folds `logits` into a running (max m, Σ exp(· − m)) along `axis`."""
  m, total = state
  new_m = jnp.maximum(m, jnp.max(logits, axis=axis))
  shape = (-1, 1) if axis == 1 else (1, -1)
  return new_m, (total * jnp.exp(m - new_m)
                 + jnp.sum(jnp.exp(logits - new_m.reshape(shape)), axis=axis))


def _infonce_forward(devices, x, y, scale):
  """Per row of this device's images, the running (max, Σ exp(· − max)) of
  its logits over every text; per text of this device, those over every
  image (each a pair of [b]); and the cosines of this device's pairs [b],
  from the same product as the logits. The log-sum-exps are kept as
  (max, sum) and each loss term formed as (max − positive) + log(sum), as
  the gathered loss forms log-softmax: float32 steps by ~1e-6 at logits of
  ~10, more than a well-fitted pair's loss can afford."""
  def body(k, carry, travelling):
    rows, own_cosines = carry
    y_k, cols_k = travelling
    cosines = x @ y_k.T
    logits = scale * cosines
    own_cosines = jnp.where(k == 0, jnp.diagonal(cosines), own_cosines)
    return ((_online_logsumexp(rows, logits, axis=1), own_cosines),
            (y_k, _online_logsumexp(cols_k, logits, axis=0)))

  start = (jnp.full((x.shape[0],), -jnp.inf, jnp.float32),
           jnp.zeros((x.shape[0],), jnp.float32))
  (rows, own_cosines), (_, cols) = _ring(
      body, (start, jnp.zeros((x.shape[0],), jnp.float32)), (y, start),
      devices)
  return rows, cols, own_cosines


def _infonce_loss(scale, rows, cols, own_cosines):
  """Σ over this device's images of (their log-sum-exp over captions −
  their positive) plus the same over its captions, float32 []."""
  positives = scale * own_cosines
  return sum(jnp.sum((m - positives) + jnp.log(total))
             for m, total in (rows, cols))


def _infonce_local(devices, x, y, scale):
  """This device's part of InfoNCE's two sums (its image rows' terms and
  its captions' terms), float32 []; x, y: unit rows [b, D], scale []. A
  custom_vjp (`_infonce_local_bwd`) keeps nothing of size B."""
  rows, cols, own_cosines = _infonce_forward(devices, x, y, scale)
  return _infonce_loss(scale, rows, cols, own_cosines)


def _infonce_local_fwd(devices, x, y, scale):
  """The value, and the residuals: this device's inputs and its rows' and
  captions' (max, sum) pairs and positive cosines, all [b] or [b, D]."""
  rows, cols, own_cosines = _infonce_forward(devices, x, y, scale)
  return (_infonce_loss(scale, rows, cols, own_cosines),
          (x, y, scale, rows, cols, own_cosines))


def _infonce_local_bwd(devices, residuals, g):
  """Gradients (dx [b, D], dy [b, D], dscale []) for cotangent g of this
  device's part: the blocks recomputed by a second ring, each softmax
  formed from the forward pass's (max, sum)."""
  x, y, scale, (max_rows, sum_rows), cols, own_cosines = residuals

  def body(k, grads, travelling):
    # Rows belong to this device (cotangent g), columns to the texts' own
    # device, whose cotangent g_k and diagonal cosines travel with them.
    dx, dscale = grads
    y_k, (max_cols_k, sum_cols_k), diagonal_k, g_k, dy_k = travelling
    cosines = x @ y_k.T
    logits = scale * cosines
    p_rows = g * jnp.exp(logits - max_rows[:, None]) / sum_rows[:, None]
    p_cols = g_k * jnp.exp(logits - max_cols_k[None, :]) / sum_cols_k[None, :]
    # Each diagonal logit enters both directions with weight −1.
    dlogits = p_rows + p_cols - jnp.where(
        k == 0, (g + g_k) * jnp.eye(x.shape[0]), 0.0)
    # d/dscale = Σ dlogits · cosines, summed as Σ_j p_ij (c_ij − c_ii) +
    # Σ_i p_ij (c_ij − c_jj) (each softmax sums to 1): no large terms that
    # cancel, so float32 keeps the small result's digits.
    dscale = dscale + jnp.sum(p_rows * (cosines - own_cosines[:, None])
                              + p_cols * (cosines - diagonal_k[None, :]))
    return ((dx + scale * dlogits @ y_k, dscale),
            (y_k, (max_cols_k, sum_cols_k), diagonal_k, g_k,
             dy_k + scale * dlogits.T @ x))

  (dx, dscale), (_, _, _, _, dy) = _ring(
      body, (jnp.zeros_like(x), jnp.zeros((), jnp.float32)),
      (y, cols, own_cosines, g, jnp.zeros_like(y)), devices)
  return dx, dy, dscale


_infonce_local = jax.custom_vjp(_infonce_local, nondiff_argnums=(0,))
_infonce_local.defvjp(_infonce_local_fwd, _infonce_local_bwd)


# --- The global losses -----------------------------------------------------

def _over_devices(local_sum, mesh: Mesh, x, y, *scalars):
  """Σ over devices of `local_sum(devices, x_d, y_d, *scalars)`, x_d and
  y_d each device's rows."""
  devices = mesh.devices.size

  def per_device(x, y, *scalars):
    # Typed as per-device values, the scalars' gradients (one part from
    # each device) are summed over the devices by the cast's transpose.
    return local_sum(devices, x, y, *_varying(scalars))[None]

  return jnp.sum(jax.shard_map(
      per_device, mesh=mesh,
      in_specs=(P(AXES), P(AXES)) + (P(),) * len(scalars),
      out_specs=P(AXES))(x, y, *scalars))


def infonce(x: jnp.ndarray, y: jnp.ndarray, scale: jnp.ndarray,
            mesh: Mesh) -> jnp.ndarray:
  """Symmetric InfoNCE of logits scale·x·yᵀ by ring.

  Args:
    x, y: unit-norm image and text embeddings, float32 [B, D], rows split
      over every device of `mesh` (B a multiple of its size).
    scale: float32 [], the inverse temperature.
  Returns: the float32 scalar `losses.infonce` computes by gathering.
  """
  return _over_devices(_infonce_local, mesh, x, y, scale) / (2.0 * x.shape[0])


def sigmoid(x: jnp.ndarray, y: jnp.ndarray, scale: jnp.ndarray,
            bias: jnp.ndarray, mesh: Mesh) -> jnp.ndarray:
  """SigLIP's pairwise sigmoid loss of logits scale·x·yᵀ + bias by ring.

  Args as `infonce`, and bias: float32 []. Returns the float32 scalar
  `losses.sigmoid_pairwise` computes by gathering.
  """
  return _over_devices(_sigmoid_local, mesh, x, y, scale, bias) / x.shape[0]
