"""Model structure against independent expectations (torchvision / HF counts)."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cliplite_jax.models import cliplite, heads, resnet, text
from conftest import quick_init


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("depth,expected", [
    # torchvision resnetN parameter counts minus the 1000-way fc layer.
    (18, 11_689_512 - (512 * 1000 + 1000)),
    (50, 25_557_032 - (2048 * 1000 + 1000)),
])
def test_resnet_matches_torchvision_parameter_count(depth, expected):
  model = resnet.ResNet(depth=depth)
  variables = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
  assert _count(variables["params"]) == expected
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 64, 64, 3)),
                                             train=False), variables)
  assert out.shape == (2, model.num_features) == (2, 512 * (4 if depth == 50 else 1))


def test_resnet_v1_5_strides_on_3x3():
  """v1.5 downsamples in the 3×3 conv: the first 1×1 conv keeps resolution."""
  model = resnet.ResNet(depth=50, width=0.125)
  x = jnp.zeros((1, 64, 64, 3))
  variables = quick_init(model, jax.random.key(0), x, train=False)
  _, state = jax.jit(lambda v: model.apply(
      v, x, train=False, capture_intermediates=True,
      mutable=["intermediates"]))(variables)
  block = state["intermediates"]["stage2_block1"]
  convs = {k: v["__call__"][0].shape for k, v in block.items()
           if k.startswith("Conv")}
  # Input to stage 2 is 16×16 (64 px / 4): 1×1 keeps it, 3×3 halves it.
  assert convs["Conv_0"][1:3] == (16, 16)
  assert convs["Conv_1"][1:3] == (8, 8)


def _torch_style_conv(x, kernel, stride):
  """The reference: XLA's convolution with torch's symmetric k // 2 padding
  on each axis."""
  kh, kw = kernel.shape[:2]
  return jax.lax.conv_general_dilated(
      x, kernel, (stride, stride), [(kh // 2, kh // 2), (kw // 2, kw // 2)],
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("size,k,stride,im2col,space_to_depth,swap", [
    (9, 1, 1, False, False, False), (9, 1, 2, False, False, False),
    (2, 3, 1, True, False, False), (1, 3, 1, True, False, False),
    (8, 3, 1, True, False, False), (4, 3, 2, True, False, False),
    (3, 3, 2, True, False, False), (12, 3, 1, True, False, False),
    (4, 5, 2, True, False, False), (3, 5, 2, True, False, False),
    (8, 7, 2, False, True, False), (9, 7, 2, False, True, False),
    (11, 3, 2, False, True, False), (6, 5, 2, False, True, False),
    (7, 3, 1, False, True, False),
    (8, 3, 1, False, False, True), (9, 5, 1, False, False, True),
    (1, 3, 1, False, False, True), (8, 3, 2, False, False, True),
    (9, 3, 1, True, True, True)])
def test_conv_matches_torch_padded_convolution_and_its_gradients(
    size, k, stride, im2col, space_to_depth, swap):
  """Every formulation (matrix product, patches, space-to-depth, swapped
  kernel gradient, XLA conv) is one function, forward and both gradients."""
  conv = resnet.Conv(5, (k, k), (stride, stride), im2col=im2col,
                     space_to_depth=space_to_depth, swap_kernel_grad=swap)
  x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
  variables = conv.init(jax.random.key(1), x)
  kernel = variables["params"]["kernel"]
  assert kernel.shape == (k, k, 3, 5)
  cotangent = jax.random.normal(jax.random.key(2),
                                (2, -(-size // stride), -(-size // stride), 5))

  @jax.jit
  def outputs_and_gradients(x, kernel, cotangent):
    results = []
    for fn in (lambda x, w: conv.apply({"params": {"kernel": w}}, x),
               lambda x, w: _torch_style_conv(x, w, stride)):
      y, vjp = jax.vjp(fn, x, kernel)
      results.append((y, *vjp(cotangent)))
    return results

  ours, ref = outputs_and_gradients(x, kernel, cotangent)
  np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5, atol=1e-5)
  for got, want in zip(ours[1:], ref[1:]):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size,stride,patches", [
    (1, 1, True), (2, 1, True), (4, 2, True), (3, 2, True), (3, 1, False),
    (4, 1, False), (5, 2, False), (8, 2, False)])
def test_im2col_applies_to_maps_of_at_most_four_output_pixels(
    size, stride, patches):
  """Patches (no XLA convolution, forward or backward) exactly where the
  output map has ≤ 4 pixels; larger maps keep XLA's conv."""
  conv = resnet.Conv(4, (3, 3), (stride, stride), im2col=True,
                     swap_kernel_grad=True)
  x = jnp.ones((2, size, size, 3))
  variables = conv.init(jax.random.key(0), x)
  loss = lambda v, x: jnp.sum(conv.apply(v, x) ** 2)
  jaxpr = str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(variables, x))
  assert ("conv_general_dilated" not in jaxpr) == patches


def test_space_to_depth_conv_on_rectangular_inputs_and_kernels():
  """Odd and even heights and widths, a 7×5 kernel: the folded stride-1 conv
  samples the same pixels as the stride-2 one."""
  kernel = jax.random.normal(jax.random.key(1), (7, 5, 3, 4))
  for h, w in ((9, 6), (8, 11), (1, 2)):
    x = jax.random.normal(jax.random.key(h * w), (2, h, w, 3))
    np.testing.assert_allclose(
        resnet.space_to_depth_conv(x, kernel),
        _torch_style_conv(x, kernel, 2), rtol=1e-5, atol=1e-5)


def test_swapped_kernel_gradient_on_rectangular_inputs_and_kernels():
  """A 5×3 kernel over 9×6, 4×11 and 1×1 maps: `stride_1_kernel_grad` is the
  gradient of the torch-padded stride-1 conv with respect to its kernel."""
  kernel = jax.random.normal(jax.random.key(1), (5, 3, 4, 6))
  for h, w in ((9, 6), (4, 11), (1, 1)):
    x = jax.random.normal(jax.random.key(h * w), (3, h, w, 4))
    _, vjp = jax.vjp(lambda k: _torch_style_conv(x, k, 1), kernel)
    cotangent = jax.random.normal(jax.random.key(h + w), (3, h, w, 6))
    np.testing.assert_allclose(
        resnet.stride_1_kernel_grad(x, cotangent, (5, 3)), vjp(cotangent)[0],
        rtol=1e-4, atol=1e-4)


def test_strided_conv_centres_output_i_on_input_2i_like_torch():
  """A centre-tap kernel picks x[2i, 2j] (flax's "SAME" would pick 2i + 1)."""
  x = jnp.arange(2 * 8 * 8, dtype=jnp.float32).reshape(2, 8, 8, 1)
  centre = jnp.zeros((3, 3, 1, 1)).at[1, 1].set(1.0)
  for im2col, space_to_depth in ((False, False), (True, False), (False, True)):
    conv = resnet.Conv(1, (3, 3), (2, 2), im2col=im2col,
                       space_to_depth=space_to_depth)
    y = conv.apply({"params": {"kernel": centre}}, x)
    np.testing.assert_array_equal(y, x[:, ::2, ::2])


@pytest.mark.parametrize("size", [8, 9])
def test_max_pool_matches_reduce_window_and_its_gradient(size):
  """Same values and, on tie-free inputs, the same gradient as torch's pool."""
  x = jax.random.normal(jax.random.key(0), (2, size, size, 4))
  reference = lambda x: jax.lax.reduce_window(  # noqa: E731
      x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
      ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = (size + 1) // 2
  cotangent = jax.random.normal(jax.random.key(1), (2, out, out, 4))

  @functools.partial(jax.jit, static_argnums=0)
  def output_and_gradient(fn, x, cotangent):
    y, vjp = jax.vjp(fn, x)
    return y, vjp(cotangent)[0]

  ours, ours_grad = output_and_gradient(resnet.max_pool_3x3_stride_2, x,
                                        cotangent)
  want, want_grad = output_and_gradient(reference, x, cotangent)
  assert ours.shape == (2, out, out, 4)
  np.testing.assert_array_equal(ours, want)
  # Overlapping windows add their gradients in another order: 1-ulp noise.
  np.testing.assert_allclose(ours_grad, want_grad, rtol=1e-6, atol=1e-6)


def test_bert_base_matches_hf_parameter_count():
  """BertModel(bert-base-uncased) with pooler has 109,482,240 parameters."""
  model = text.TextEncoder()
  ids = jnp.zeros((1, 8), jnp.int32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), ids, ids,
                                                train=False))
  assert _count(variables["params"]) == 109_482_240


def test_gelu_is_x_times_the_normal_cdf():
  """Against Φ from the error function in float64 (scipy-free), and hand
  values: GELU(0) = 0, GELU(1) = Φ(1) = 0.8413447."""
  x = np.linspace(-8.0, 8.0, 3201)
  phi = np.array([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in x])
  np.testing.assert_allclose(text.gelu(jnp.asarray(x, jnp.float32)), x * phi,
                             atol=2e-6)
  np.testing.assert_allclose(text.gelu(jnp.array([0.0, 1.0])),
                             [0.0, 0.8413447], atol=1e-6)


@pytest.mark.parametrize("pooling", ["pooler", "mean", "cls"])
def test_text_features_ignore_padding(pooling):
  model = text.TextEncoder(vocab_size=50, hidden=16, layers=2, heads=2,
                           mlp_dim=32, max_len=12, pooling=pooling)
  ids = jnp.array([[2, 7, 9, 3, 0, 0, 0, 0]])
  mask = (ids > 0).astype(jnp.int32)
  variables = model.init(jax.random.key(0), ids, mask, train=False)
  out = model.apply(variables, ids, mask, train=False)
  other_padding = ids.at[0, 5:].set(11)
  out2 = model.apply(variables, other_padding, mask, train=False)
  np.testing.assert_allclose(out["features"], out2["features"], atol=1e-6)
  assert out["features"].shape == (1, 16)
  assert ("pooler_output" in out) == (pooling == "pooler")


@pytest.mark.parametrize("d_in,d_out", [(8, 16), (16, 8), (12, 12)])
def test_noisy_identity_init(d_in, d_out):
  kernel = np.asarray(heads.noisy_identity_init(jax.random.key(1), (d_in, d_out)))
  n = min(d_in, d_out)
  np.testing.assert_array_equal(kernel[np.arange(n), np.arange(n)], 1.0)
  off = kernel.copy()
  off[np.arange(n), np.arange(n)] = 0.0
  assert np.all(np.abs(off) <= 0.01)
  assert np.abs(off).max() > 0.005  # really noisy, not zeros


def test_milinear_block_structure_and_shortcut_init():
  block = heads.MILinearBlock(out_dim=24)
  x = jax.random.normal(jax.random.key(0), (5, 10))
  variables = block.init(jax.random.key(1), x, train=False)
  params = variables["params"]
  kernel = np.asarray(params["shortcut"]["kernel"])
  np.testing.assert_array_equal(np.diag(kernel[:, :10]), 1.0)
  assert "bias" not in params["linear1"]  # Linear(2048, no bias)
  assert set(variables["batch_stats"]["norm"]) == {"mean", "var"}
  out, _ = block.apply(variables, x, train=True, mutable=["batch_stats"])
  # LayerNorm output (scale 1, bias 0 at init): zero mean, unit variance rows.
  np.testing.assert_allclose(out.mean(axis=1), 0.0, atol=1e-5)
  np.testing.assert_allclose(out.var(axis=1), 1.0, atol=1e-2)
  # Recompute the block by hand from its parameters.
  h = x @ params["linear1"]["kernel"]
  h = (h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-5)
  h = h * params["norm"]["scale"] + params["norm"]["bias"]
  h = jax.nn.relu(h) @ params["linear2"]["kernel"] + params["linear2"]["bias"]
  s = h + x @ kernel + params["shortcut"]["bias"]
  s = (s - s.mean(1, keepdims=True)) / jnp.sqrt(s.var(1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(out, s, atol=1e-4)


def test_cliplite_outputs_and_temperature_init(tiny):
  model = cliplite.build(tiny)
  images = jnp.zeros((4, 32, 32, 3))
  ids = jnp.ones((4, 30), jnp.int32)
  rngs = {"params": jax.random.key(0), "prior": jax.random.key(1),
          "dropout": jax.random.key(2)}
  variables = quick_init(model, rngs, images, ids, ids, train=False)
  assert float(variables["params"]["log_scale"]) == pytest.approx(
      math.log(1 / 0.07))
  out = jax.jit(lambda v: model.apply(v, images, ids, ids, train=False,
                                      rngs=rngs))(variables)
  assert out["img_emb"].shape == out["txt_emb"].shape == (4, 32)
  for key in ("prior_img_real", "prior_img_noise", "prior_txt_real",
              "prior_txt_noise"):
    assert out[key].shape == (4,)
  d = variables["params"]["image_prior"]
  assert [d[f"dense{i}"]["kernel"].shape[1] for i in range(2)] == [1000, 200]
