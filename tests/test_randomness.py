"""The training-time randomness, measured: text-encoder dropout, the prior
discriminators' U[0, 1) noise and the random resized crop (against
torchvision's `RandomResizedCrop`).

Each test fails if its randomness is switched off, drawn from the wrong
distribution or wired to the wrong rng, not only if nothing random happens.
"""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import stats

from cliplite_jax.data import augment
from cliplite_jax.models import cliplite, heads, text

# Every statistical check below runs on fixed seeds, so it is deterministic;
# the thresholds are wide enough (p > 1e-3, ~5σ) that a correct
# implementation drawing other random numbers would still pass.
P_MIN = 1e-3


def _compile(fn, *args):
  """`jax.jit(fn)` for `args`, compiled without LLVM optimisation: the
  threefry expansions behind dropout take seconds to optimise and the arrays
  here are tiny (see conftest.quick_init)."""
  return jax.jit(fn).lower(*args).compile(
      {"xla_backend_optimization_level": 0})


# --------------------------------------------------------------------------
# Dropout in the text encoder.

RATE = 0.3  # not BERT's 0.1, so a hard-coded default shows up
BATCH, LENGTH, HIDDEN, HEADS = 16, 12, 32, 2


def _encoder(rate: float) -> text.TextEncoder:
  return text.TextEncoder(vocab_size=64, hidden=HIDDEN, layers=1, heads=HEADS,
                          mlp_dim=64, max_len=16, dropout=rate)


@pytest.fixture(scope="module")
def dropout_runs():
  """The encoder's outputs and captured intermediates for train/eval, two
  dropout keys and rates RATE and 0, from two compiled programs.

  Returns (params, {(rate, train, key index): (outputs, intermediates)}).
  """
  ids = jax.random.randint(jax.random.key(0), (BATCH, LENGTH), 1, 64)
  # No padding: every key gets attention, so every attention weight's
  # dropout decision can be read back (see _attention_keep_mask).
  mask = jnp.ones_like(ids)
  keys = (jax.random.key(1), jax.random.key(2))
  params = _compile(lambda: _encoder(RATE).init(
      jax.random.key(3), ids, mask))()["params"]
  runs = {}
  for rate in (RATE, 0.0):
    model = _encoder(rate)

    def all_runs(params, keys, model=model):
      return {(train, k): model.apply(
          {"params": params}, ids, mask, train=train,
          rngs={"dropout": keys[k]}, capture_intermediates=True,
          mutable=["intermediates"])
              for train in (True, False) for k in (0, 1)}

    for (train, k), (out, state) in _compile(all_runs, params, keys)(
        params, keys).items():
      runs[rate, train, k] = (jax.tree.map(np.asarray, out),
                              jax.tree.map(np.asarray, state["intermediates"]))
  return jax.tree.map(np.asarray, params), runs


def _captured(intermediates, *path):
  node = intermediates
  for name in path:
    node = node[name]
  return np.float64(node["__call__"][0])


# (input, output) of each nn.Dropout the encoder applies to activations:
# after the embedding LayerNorm, and on both residual branches of the layer.
DROPOUT_SITES = {
    "embeddings": (("embeddings_norm",), ("Dropout_0",)),
    "attention residual": (("layer_0", "attention"), ("layer_0", "Dropout_0")),
    "feed-forward residual": (("layer_0", "output"), ("layer_0", "Dropout_1")),
}


def _attention_keep_mask(params, intermediates, rate):
  """Which attention probabilities survived dropout, read off the captures.

  The attention output is out = Σ_j c_ij v_j (per batch row and head)
  projected by `out`, with c_ij = keep_ij · p_ij / (1 − rate) and p the
  softmax of q·k/√d. The projection is square, so y = Σ_j c_ij v_j is
  recovered exactly, and with fewer keys (12) than head dims (16) so are the
  c_ij; keep = c (1 − rate) / p is then 0 or 1 up to rounding. Returns the
  float keep mask [B, heads, L, L].
  """
  cap = functools.partial(_captured, intermediates, "layer_0", "attention")
  q, k, v, out = cap("query"), cap("key"), cap("value"), cap("out")
  proj = params["layer_0"]["attention"]["out"]
  kernel = np.float64(proj["kernel"]).reshape(HIDDEN, HIDDEN)
  y = ((out - proj["bias"]) @ np.linalg.inv(kernel)).reshape(q.shape)
  logits = np.einsum("bihd,bjhd->bhij", q / math.sqrt(q.shape[-1]), k)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  c = np.einsum("bihd,bhdj->bhij", y,
                np.linalg.pinv(v.transpose(0, 2, 1, 3)))
  return c * (1 - rate) / p


def _assert_dropped_fraction(dropped: np.ndarray, rate: float, what: str):
  """The fraction of dropped units is `rate` within 5 binomial σ."""
  sigma = math.sqrt(rate * (1 - rate) / dropped.size)
  assert abs(dropped.mean() - rate) < 5 * sigma + 1e-12, (
      f"{what}: dropped {dropped.mean():.4f} of {dropped.size}, rate {rate}")


def test_dropout_depends_on_train_and_the_dropout_rng(dropout_runs):
  _, runs = dropout_runs
  features = {key: out["features"] for key, (out, _) in runs.items()}
  # Training: random, a function of the "dropout" key.
  assert not np.allclose(features[RATE, True, 0], features[RATE, True, 1])
  assert not np.allclose(features[RATE, True, 0], features[RATE, False, 0])
  # Evaluation: deterministic, whatever the key.
  np.testing.assert_array_equal(features[RATE, False, 0],
                                features[RATE, False, 1])
  # Rate 0 is the identity even in training, and the same network.
  for k in (0, 1):
    np.testing.assert_allclose(features[0.0, True, k],
                               features[RATE, False, 0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(features[0.0, False, k],
                               features[RATE, False, 0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("site", sorted(DROPOUT_SITES))
def test_activation_dropout_rate_and_scaling(dropout_runs, site):
  """At each dropout site, training zeroes a `rate` fraction of the units
  and multiplies the rest by exactly 1/(1 − rate); evaluation and rate 0
  pass everything through."""
  _, runs = dropout_runs
  source, dropped_at = DROPOUT_SITES[site]
  for (rate, train, k), (_, captured) in runs.items():
    x, y = _captured(captured, *source), _captured(captured, *dropped_at)
    assert np.all(x != 0)  # a zero output can only mean "dropped"
    dropped = y == 0
    if not train or rate == 0:
      assert not dropped.any(), (site, rate, train)
      np.testing.assert_allclose(y, x, rtol=1e-6, atol=0)
      continue
    _assert_dropped_fraction(dropped, rate, site)
    np.testing.assert_allclose(y[~dropped], x[~dropped] / (1 - rate),
                               rtol=1e-5, atol=0)
  # Fresh masks per key, not one fixed pattern.
  masks = [_captured(runs[RATE, True, k][1], *dropped_at) == 0 for k in (0, 1)]
  assert (masks[0] != masks[1]).mean() > 0.2


def test_attention_probability_dropout_rate_and_independence(dropout_runs):
  """BERT drops attention probabilities independently per batch row, head,
  query and key, at the encoder's rate, scaling the kept ones by
  1/(1 − rate)."""
  params, runs = dropout_runs
  for (rate, train, k), (_, captured) in runs.items():
    # In evaluation nothing is dropped or rescaled: an effective rate of 0.
    keep = _attention_keep_mask(params, captured, rate if train else 0.0)
    # Exactly 0 or 1: kept weights carry the 1/(1 − rate) factor.
    np.testing.assert_allclose(keep, np.round(keep), rtol=0, atol=0.02)
    keep = np.round(keep).astype(bool)
    if not train or rate == 0:
      assert keep.all(), (rate, train)
      continue
    _assert_dropped_fraction(~keep, rate, "attention probabilities")
    # Not broadcast over the batch or the heads (flax's default): masks of
    # two rows or two heads agree on only ~r² + (1 − r)² of the entries.
    agree = rate**2 + (1 - rate)**2
    assert (keep[0] == keep[1]).mean() < agree + 0.15
    assert (keep[:, 0] == keep[:, 1]).mean() < agree + 0.1


# --------------------------------------------------------------------------
# The prior discriminators' noise.

IMG_WIDTH, TXT_WIDTH, PRIOR_BATCH = 40, 56, 64


class _ImageTower(nn.Module):
  """A linear stand-in for the ResNet: features [B, IMG_WIDTH]."""

  @nn.compact
  def __call__(self, images, train=False):
    return nn.Dense(IMG_WIDTH)(images.reshape(images.shape[0], -1))


class _TextTower(nn.Module):
  """A bag-of-embeddings stand-in for BERT: features [B, TXT_WIDTH]."""

  @nn.compact
  def __call__(self, input_ids, attention_mask, train=False):
    return {"features": nn.Embed(16, TXT_WIDTH)(input_ids).mean(1)}


def _cliplite(prior_img=True, prior_txt=True):
  return cliplite.CLIPLite(image_encoder=_ImageTower(),
                           text_encoder=_TextTower(), proj_dim=8,
                           prior_img=prior_img, prior_txt=prior_txt,
                           prior_widths=(16, 8))


def _prior_inputs():
  images = jax.random.normal(jax.random.key(0), (PRIOR_BATCH, 4, 4, 3))
  ids = jax.random.randint(jax.random.key(1), (PRIOR_BATCH, 5), 0, 16)
  return images, ids, jnp.ones_like(ids)


def _apply_recording_discriminators(model, variables, rngs):
  """`model.apply` in eval mode, also returning what each discriminator was
  called on: ({outputs}, {discriminator name: [inputs in call order]})."""
  seen = {}

  def record(next_fun, args, kwargs, context):
    if (isinstance(context.module, heads.PriorDiscriminator)
        and context.method_name == "__call__"):
      seen.setdefault(context.module.name, []).append(args[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    out = model.apply(variables, *_prior_inputs(), train=False, rngs=rngs)
  return out, seen


@pytest.fixture(scope="module")
def prior_runs():
  """Outputs, discriminator inputs and raw features of a CLIPLite with both
  priors, for prior keys 0/1 and two dropout keys, from one program."""
  model = _cliplite()
  variables = _compile(lambda: model.init(
      {"params": jax.random.key(0), "prior": jax.random.key(1)},
      *_prior_inputs()))()
  keys = {"prior0": jax.random.key(10), "prior1": jax.random.key(11),
          "dropout0": jax.random.key(20), "dropout1": jax.random.key(21)}
  runs = {"base": ("prior0", "dropout0"), "other_prior": ("prior1", "dropout0"),
          "other_dropout": ("prior0", "dropout1")}

  def everything(variables, keys):
    results = {name: _apply_recording_discriminators(
        model, variables, {"prior": keys[p], "dropout": keys[d]})
               for name, (p, d) in runs.items()}
    images, ids, mask = _prior_inputs()
    features = {
        "img": model.apply(variables, images, method="encode_image")[0],
        "txt": model.apply(variables, ids, mask, method="encode_text")[0]}
    return results, features

  results, features = _compile(everything, variables, keys)(variables, keys)
  return model, variables, jax.tree.map(np.asarray, (results, features))


def test_prior_noise_logits_are_the_discriminator_on_uniform_noise(prior_runs):
  """"prior_*_noise" is D applied to U[0, 1) noise of the features' shape
  and "prior_*_real" is D applied to the features themselves."""
  model, variables, (results, features) = prior_runs
  out, seen = results["base"]
  noises = {}
  for name, disc in (("img", "image_prior"), ("txt", "text_prior")):
    real, noise = seen[disc]  # each discriminator runs twice: real, noise
    np.testing.assert_array_equal(real, features[name])
    assert noise.shape == features[name].shape and noise.dtype == np.float32
    # The logits reported are the discriminator's on exactly these inputs.
    apply = functools.partial(heads.PriorDiscriminator((16, 8)).apply,
                              {"params": variables["params"][disc]})
    np.testing.assert_allclose(out[f"prior_{name}_noise"], apply(noise),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[f"prior_{name}_real"], apply(real),
                               rtol=1e-5, atol=1e-6)
    noises[name] = noise
  # The distribution: U[0, 1), element by element.
  for name, noise in noises.items():
    assert noise.min() >= 0 and noise.max() < 1, name
    n = noise.size
    assert abs(noise.mean() - 0.5) < 5 * math.sqrt(1 / 12 / n), name
    # Var of the sample variance of U[0, 1): (1/80 − 1/144) / n.
    assert abs(noise.var() - 1 / 12) < 5 * math.sqrt((1 / 80 - 1 / 144) / n)
    assert stats.kstest(noise.ravel(), "uniform").pvalue > P_MIN, name
    # Drawn per element, not one row or column broadcast.
    assert len(np.unique(noise, axis=0)) == noise.shape[0], name
    assert np.unique(noise, axis=1).shape[1] == noise.shape[1], name
    # No correlation between neighbouring elements.
    flat = noise.ravel()
    assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 5 / math.sqrt(n)
  # The image and text priors draw separately.
  assert not np.allclose(noises["img"][:, :IMG_WIDTH],
                         noises["txt"][:, :IMG_WIDTH])


def test_prior_noise_comes_from_the_prior_rng(prior_runs):
  """New "prior" key: new noise; new "dropout" key: the same noise."""
  _, _, (results, _) = prior_runs
  base, other_prior, other_dropout = (
      results[k][1] for k in ("base", "other_prior", "other_dropout"))
  for disc in ("image_prior", "text_prior"):
    np.testing.assert_array_equal(base[disc][0], other_prior[disc][0])
    assert not np.allclose(base[disc][1], other_prior[disc][1]), disc
    np.testing.assert_array_equal(base[disc][1], other_dropout[disc][1])
  outs = [results[k][0] for k in ("base", "other_prior")]
  for name in ("img", "txt"):
    assert not np.allclose(outs[0][f"prior_{name}_noise"],
                           outs[1][f"prior_{name}_noise"])
    np.testing.assert_array_equal(outs[0][f"prior_{name}_real"],
                                  outs[1][f"prior_{name}_real"])


@pytest.mark.parametrize("prior_img,prior_txt", [(False, False), (True, False),
                                                 (False, True)])
def test_disabled_prior_draws_no_noise_and_has_no_discriminator(prior_img,
                                                                prior_txt):
  """A prior that is off has no parameters and no outputs, and its
  discriminator never runs; with both off no "prior" rng is needed."""
  model = _cliplite(prior_img, prior_txt)
  rngs = {"params": jax.random.key(0), "prior": jax.random.key(1)}
  variables = jax.eval_shape(lambda: model.init(rngs, *_prior_inputs()))
  enabled = {"img": prior_img, "txt": prior_txt}
  names = {"img": "image_prior", "txt": "text_prior"}
  for name, on in enabled.items():
    assert (names[name] in variables["params"]) == on

  needed = {} if not (prior_img or prior_txt) else {"prior": rngs["prior"]}
  out, seen = jax.eval_shape(lambda v: _apply_recording_discriminators(
      model, v, needed), variables)
  for name, on in enabled.items():
    present = {f"prior_{name}_real", f"prior_{name}_noise"} & set(out)
    assert present == ({f"prior_{name}_real", f"prior_{name}_noise"}
                       if on else set())
    assert len(seen.get(names[name], [])) == (2 if on else 0)


# --------------------------------------------------------------------------
# Random resized crop against torchvision.
#
# The reference is torchvision 0.28's `RandomResizedCrop` (the release for
# torch 2.13), transcribed below: its `get_params` line for line, drawing
# from torch's RNG, and the two paths of its `resized_crop`. The transcription
# is checked against torchvision itself wherever torchvision is installed
# (test_reference_is_torchvisions); the project does not depend on it because
# PyPI's torchvision wheels do not load next to the CPU-only torch build.


def _reference_get_params(height, width, scale, ratio):
  """torchvision's `RandomResizedCrop.get_params`: (top, left, h, w)."""
  torch = pytest.importorskip("torch")
  area = height * width
  log_ratio = torch.log(torch.tensor(ratio))
  for _ in range(10):
    target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
    aspect_ratio = torch.exp(
        torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
    w = int(round(math.sqrt(target_area * aspect_ratio)))
    h = int(round(math.sqrt(target_area / aspect_ratio)))
    if 0 < w <= width and 0 < h <= height:
      i = torch.randint(0, height - h + 1, size=(1,)).item()
      j = torch.randint(0, width - w + 1, size=(1,)).item()
      return i, j, h, w
  # Fallback to central crop.
  in_ratio = float(width) / float(height)
  if in_ratio < min(ratio):
    w = width
    h = int(round(w / min(ratio)))
  elif in_ratio > max(ratio):
    h = height
    w = int(round(h * max(ratio)))
  else:  # whole image
    w = width
    h = height
  return (height - h) // 2, (width - w) // 2, h, w


def _reference_resized_crop_pil(image, top, left, h, w, size):
  """torchvision's `resized_crop` of a PIL image, bilinear: PIL's crop, then
  PIL's resize (antialiased whatever `antialias` says)."""
  pil = Image.fromarray(image).crop((left, top, left + w, top + h))
  return np.asarray(pil.resize((size, size), Image.BILINEAR))


def _reference_resized_crop_tensor(image, top, left, h, w, size):
  """torchvision's `resized_crop` of a uint8 tensor, bilinear, antialias=True:
  float32 interpolation, then clamp, round and cast back."""
  torch = pytest.importorskip("torch")
  x = torch.from_numpy(np.ascontiguousarray(
      image[top:top + h, left:left + w])).permute(2, 0, 1)[None].float()
  x = torch.nn.functional.interpolate(x, size=[size, size], mode="bilinear",
                                      align_corners=False, antialias=True)
  x = torch.round(x.clamp(min=0, max=255)).to(torch.uint8)
  return x[0].permute(1, 2, 0).numpy()


def _reference_boxes(height, width, draws, scale, ratio, seed=0):
  """(top, left, h, w) [draws, 4] of the reference `get_params`."""
  torch = pytest.importorskip("torch")
  with torch.random.fork_rng(devices=[]):  # leaves torch's global RNG as is
    torch.manual_seed(seed)
    return np.asarray([_reference_get_params(height, width, scale, ratio)
                       for _ in range(draws)])


def test_reference_is_torchvisions():
  """The transcription draws torchvision's boxes from the same torch seed
  and resizes to its pixels."""
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  functional = torchvision.transforms.functional
  get_params = torchvision.transforms.RandomResizedCrop.get_params
  for height, width in ((48, 64), (32, 96), (80, 50), (10, 100)):
    with torch.random.fork_rng(devices=[]):
      torch.manual_seed(0)
      theirs = [get_params(Image.new("RGB", (width, height)),
                           [0.2, 1.0], [3 / 4, 4 / 3]) for _ in range(200)]
    np.testing.assert_array_equal(
        _reference_boxes(height, width, 200, (0.2, 1.0), (3 / 4, 4 / 3)),
        theirs)
  image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), np.uint8)
  for size in (8, 24, 64):
    bilinear = functional.InterpolationMode.BILINEAR
    pil = functional.resized_crop(Image.fromarray(image), 3, 7, 30, 40,
                                  [size, size], bilinear, antialias=True)
    np.testing.assert_array_equal(
        _reference_resized_crop_pil(image, 3, 7, 30, 40, size),
        np.asarray(pil))
    tensor = functional.resized_crop(torch.from_numpy(image).permute(2, 0, 1),
                                     3, 7, 30, 40, [size, size], bilinear,
                                     antialias=True)
    np.testing.assert_array_equal(
        _reference_resized_crop_tensor(image, 3, 7, 30, 40, size),
        tensor.permute(1, 2, 0).numpy())


class _BoxRecorder(np.ndarray):
  """An image that remembers the boxes sliced out of it, (top, left, h, w)."""

  def __getitem__(self, key):
    rows, cols = key
    top, bottom, _ = rows.indices(self.shape[0])
    left, right, _ = cols.indices(self.shape[1])
    self.boxes.append((top, left, bottom - top, right - left))
    return np.asarray(self)[key]


def _recording(image: np.ndarray) -> _BoxRecorder:
  recorder = image.view(_BoxRecorder)
  recorder.boxes = []
  return recorder


def _our_boxes(height, width, draws, scale, ratio, seed=0):
  """(top, left, h, w) [draws, 4] of our crop on a height × width image."""
  image = _recording(np.zeros((height, width, 3), np.uint8))
  rng = np.random.default_rng(seed)
  for _ in range(draws):
    augment.random_resized_crop(image, rng, 2, scale, ratio)
  assert len(image.boxes) == draws  # one slice per crop
  return np.asarray(image.boxes)


def _box_statistics(boxes, height, width):
  """Area fraction, log aspect ratio and relative placement of each box."""
  top, left, h, w = boxes.T.astype(np.float64)
  return {"area": h * w / (height * width), "log_ratio": np.log(w / h),
          "top": top / np.maximum(height - h, 1),
          "left": left / np.maximum(width - w, 1)}


@pytest.mark.parametrize("height,width,scale,ratio", [
    # Paper setting on a landscape image: many draws rejected for not fitting.
    (48, 64, (0.2, 1.0), (3 / 4, 4 / 3)),
    # So elongated that ~1 in 5 crops exhausts its 10 tries and falls back.
    (32, 96, (0.2, 1.0), (3 / 4, 4 / 3)),
    # A portrait image and the tighter scale of configs/default.py.
    (80, 50, (0.7, 1.0), (3 / 4, 4 / 3)),
])
def test_crop_box_distribution_matches_torchvision(height, width, scale, ratio):
  """Our boxes and torchvision's, each drawn with its own RNG, have the same
  distributions of area, aspect ratio and placement (two-sample KS tests)
  and of box shape (h, w), fallback included (chi-square)."""
  draws = 6000
  ours = _our_boxes(height, width, draws, scale, ratio)
  theirs = _reference_boxes(height, width, draws, scale, ratio)
  ours_stats = _box_statistics(ours, height, width)
  theirs_stats = _box_statistics(theirs, height, width)
  for name in ours_stats:
    result = stats.ks_2samp(ours_stats[name], theirs_stats[name])
    assert result.pvalue > P_MIN, (name, result)
  # The frequency of each box shape, a finer look at the joint (h, w).
  index = {s: i for i, s in enumerate(
      sorted(set(map(tuple, np.concatenate([ours, theirs])[:, 2:]))))}
  counts = np.zeros((2, len(index)))
  for row, boxes in enumerate((ours, theirs)):
    for s in map(tuple, boxes[:, 2:]):
      counts[row, index[s]] += 1
  # Pool rare shapes so the chi-square approximation holds.
  common = counts.sum(0) >= 20
  table = np.concatenate([counts[:, common],
                          counts[:, ~common].sum(1, keepdims=True)], axis=1)
  table = table[:, table.sum(0) > 0]
  assert stats.chi2_contingency(table).pvalue > P_MIN


@pytest.mark.parametrize("height,width", [(10, 100), (100, 10), (15, 120),
                                          (130, 17)])
def test_crop_falls_back_to_torchvisions_clamped_centre_crop(height, width):
  """An image no box fits in 10 tries gets torchvision's fallback, exactly:
  the centred crop of the whole image with the ratio clamped."""
  ours = _our_boxes(height, width, 20, (0.2, 1.0), (3 / 4, 4 / 3))
  theirs = _reference_boxes(height, width, 20, (0.2, 1.0), (3 / 4, 4 / 3))
  assert len(set(map(tuple, theirs))) == 1  # really the fallback
  np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("size", [8, 24, 64])  # ×5 and ×1.7 down, ×2 up
def test_crop_resize_matches_torchvision_resized_crop(size):
  """With the box pinned (one scale, one ratio), our crop is torchvision's
  `resized_crop` of that box: pixel for pixel on the PIL path that
  `RandomResizedCrop` takes for PIL images, and within a grey level of its
  tensor path.

  The tensor path (bilinear, antialias=True) computes in float and rounds
  once, where PIL resamples in two passes in fixed point, rounding to 8 bits
  after each; on uniform-noise pixels, the worst case for rounding, the two
  differ by at most 1 grey level and by ~0.2 on average.
  """
  image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), np.uint8)
  recorder = _recording(image)
  # Area 2400 · 0.5 and ratio 4/3 make the box 40 wide and 30 high.
  ours = augment.random_resized_crop(recorder, np.random.default_rng(1), size,
                                     scale=(0.5, 0.5), ratio=(4 / 3, 4 / 3))
  (top, left, h, w), = recorder.boxes
  assert (h, w) == (30, 40)
  assert ours.shape == (size, size, 3) and ours.dtype == np.uint8
  np.testing.assert_array_equal(
      ours, _reference_resized_crop_pil(image, top, left, h, w, size))
  tensor = _reference_resized_crop_tensor(image, top, left, h, w, size)
  diff = np.abs(ours.astype(int) - tensor)
  assert diff.max() <= 1 and diff.mean() < 0.3, (diff.max(), diff.mean())
  # Nearest-neighbour would be far off: the comparison has teeth.
  nearest = np.asarray(Image.fromarray(image[top:top + h, left:left + w])
                       .resize((size, size), Image.NEAREST))
  assert np.abs(ours.astype(int) - nearest).mean() > 5
