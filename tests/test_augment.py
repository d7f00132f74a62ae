"""The fast augmentation paths against their reference semantics, on
photographs: the crop decoded only as far as it needs (against decode →
crop → PIL resize) and colour jitter on device (against torchvision's float
formulas computed independently, and against the PIL path)."""
import colorsys
import io

import jax.numpy as jnp
import numpy as np
import pytest
import simplejpeg
from PIL import Image

import photos
from cliplite_jax.data import augment

NAMES = ("astronaut", "coffee", "chelsea", "hubble_deep_field", "retina",
         "camera", "china", "flower")


def _photo_jpeg(name, quality=90) -> bytes:
  out = io.BytesIO()
  Image.fromarray(photos._pixels(name)).convert("RGB").save(
      out, format="JPEG", quality=quality)
  return out.getvalue()


@pytest.fixture(scope="module")
def jpegs():
  return {name: _photo_jpeg(name) for name in NAMES}


def _reference_crop(data, seed, size, scale):
  with Image.open(io.BytesIO(data)) as image:
    pixels = np.asarray(image.convert("RGB"))
  return augment.random_resized_crop(pixels, np.random.default_rng(seed),
                                     size, scale)


@pytest.mark.parametrize("size", [64, 224])
def test_the_fast_crop_is_the_reference_or_within_a_grey_level(jpegs, size):
  """The same pixels as decode → crop → PIL resize, except where the crop
  is decoded at a reduced DCT scale: there within 1 grey level (mean
  absolute difference per image)."""
  reduced, worst = 0, 0.0
  for name, data in jpegs.items():
    with Image.open(io.BytesIO(data)) as image:
      height, width = image.height, image.width
    for seed in range(6):
      rng = np.random.default_rng(seed)
      fast = augment.decode_random_resized_crop(data, rng, size, (0.2, 1.0))
      want = _reference_crop(data, seed, size, (0.2, 1.0))
      assert fast.shape == want.shape == (size, size, 3)
      assert fast.dtype == np.uint8
      box = augment.crop_box(height, width, np.random.default_rng(seed),
                             (0.2, 1.0))
      if augment._reduction(box, size) == 1:
        np.testing.assert_array_equal(fast, want, err_msg=name)
      else:
        reduced += 1
        worst = max(worst, np.abs(fast.astype(float) - want).mean())
  assert reduced > 0 if size == 64 else True  # the large photos at 64 px
  assert worst <= 1.0, worst


@pytest.mark.parametrize("size", [64, 224])
def test_the_opencv_resize_is_within_a_grey_level_of_pils(jpegs, size):
  """data.resize="opencv" against the reference (decode → crop → PIL's
  antialiased bilinear) on the photographs, the same crops (the resize
  draws nothing): mean absolute difference under 2 grey levels per image
  (1.8 at worst, a sharp photo shrunk 1.1–1.6×; most under 1), 99th
  percentile at most 16. OpenCV's plain bilinear, aliased, is several
  times further off at 64 px, which is what the prefilter is for."""
  import cv2
  worst_mean, worst_p99, aliased = 0.0, 0.0, 0.0
  for name, data in jpegs.items():
    for seed in range(6):
      fast = augment.decode_random_resized_crop(
          data, np.random.default_rng(seed), size, (0.2, 1.0),
          resize="opencv")
      want = _reference_crop(data, seed, size, (0.2, 1.0)).astype(float)
      assert fast.shape == (size, size, 3) and fast.dtype == np.uint8
      diff = np.abs(fast - want)
      worst_mean = max(worst_mean, diff.mean())
      worst_p99 = max(worst_p99, np.percentile(diff, 99))
      with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image.convert("RGB"))
      top, left, h, w = augment.crop_box(
          *pixels.shape[:2], np.random.default_rng(seed), (0.2, 1.0))
      plain = cv2.resize(pixels[top:top + h, left:left + w], (size, size),
                         interpolation=cv2.INTER_LINEAR)
      aliased = max(aliased, np.abs(plain - want).mean())
  assert worst_mean < 2.0 and worst_p99 <= 16, (worst_mean, worst_p99)
  if size == 64:
    assert aliased > 2 * worst_mean, (aliased, worst_mean)


def test_draws_match_the_reference_so_the_stream_is_unchanged(jpegs):
  data = jpegs["coffee"]
  fast_rng, ref_rng = np.random.default_rng(3), np.random.default_rng(3)
  augment.decode_random_resized_crop(data, fast_rng, 64)
  with Image.open(io.BytesIO(data)) as image:
    augment.random_resized_crop(np.asarray(image.convert("RGB")), ref_rng, 64)
  assert fast_rng.random() == ref_rng.random()


def test_simplejpeg_decodes_the_pixels_pil_decodes(jpegs):
  for name, data in jpegs.items():
    with Image.open(io.BytesIO(data)) as image:
      pil = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(simplejpeg.decode_jpeg(data, "RGB"), pil)


def test_other_formats_and_bad_bytes():
  pixels = photos._pixels("chelsea")
  rng = np.random.default_rng(0)
  for fmt, mode in (("PNG", "RGB"), ("JPEG", "CMYK"), ("JPEG", "L"),
                    ("PNG", "P")):
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, format=fmt)
    image = augment.decode_random_resized_crop(out.getvalue(), rng, 32)
    assert image.shape == (32, 32, 3), (fmt, mode)
  good = _photo_jpeg("chelsea")
  for bad in (good[: len(good) // 2], good[:100], b"\xff\xd8 not a jpeg",
              b"not an image at all", b""):
    assert augment.decode_random_resized_crop(bad, rng, 32) is None


def _torchvision_float(image, factors, order):
  """torchvision's tensor ColorJitter on a float image in [0, 1], written
  out per pixel with the standard library's HSV conversion."""
  x = image.astype(np.float64) / 255.0

  def gray(v):
    return 0.2989 * v[..., 0:1] + 0.587 * v[..., 1:2] + 0.114 * v[..., 2:3]

  for op in order:
    f = factors[op]
    if op == 0:
      x = np.clip(f * x, 0, 1)
    elif op == 1:
      x = np.clip(f * x + (1 - f) * gray(x).mean(), 0, 1)
    elif op == 2:
      x = np.clip(f * x + (1 - f) * gray(x), 0, 1)
    elif f != 0:
      flat = x.reshape(-1, 3)
      for i, (r, g, b) in enumerate(flat):
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        flat[i] = colorsys.hsv_to_rgb((h + f) % 1.0, s, v)
      x = flat.reshape(x.shape)
  return x * 255.0


def _small(name, side=24):
  return np.asarray(Image.fromarray(photos._pixels(name)).convert("RGB")
                    .resize((side, side), Image.BILINEAR))


def _device(images, params):
  factors = jnp.asarray(np.stack([f for f, _ in params]))
  order = jnp.asarray(np.stack([o for _, o in params]))
  return np.asarray(augment.apply_color_jitter(jnp.asarray(images), factors,
                                               order))


def test_device_jitter_is_torchvisions_float_formula():
  images = np.stack([_small(n) for n in ("coffee", "flower", "camera")])
  params = [augment.color_jitter_params(np.random.default_rng(s), p=1.0)
            for s in range(3)]
  got = _device(images, params)
  for image, (factors, order), out in zip(images, params, got):
    want = _torchvision_float(image, factors, order)
    np.testing.assert_allclose(out, want, atol=2e-3 * 255)


def test_device_jitter_single_adjustments_by_hand():
  red = np.zeros((1, 2, 2, 3), np.uint8)
  red[..., 0] = 200
  order = np.arange(4, dtype=np.int32)
  # A third of the colour wheel turns red into green, keeping s and v.
  out = _device(red, [(np.float32([1, 1, 1, 1 / 3]), order)])
  np.testing.assert_allclose(out[0, 0, 0], [0, 200, 0], atol=1e-3)
  # Saturation 0 is the grey level; contrast 0 the image's mean grey.
  image = _small("coffee", 4)[None]
  grey = (0.2989 * image[..., 0] + 0.587 * image[..., 1]
          + 0.114 * image[..., 2])
  out = _device(image, [(np.float32([1, 1, 0, 0]), order)])
  np.testing.assert_allclose(out[0], np.repeat(grey[0][..., None], 3, -1),
                             atol=1e-3)
  out = _device(image, [(np.float32([1, 0, 1, 0]), order)])
  np.testing.assert_allclose(out[0], np.full((4, 4, 3), grey.mean()),
                             atol=1e-3)
  # Neutral factors leave an image exactly as it is.
  out = _device(image, [(np.float32(augment.NEUTRAL_JITTER), order)])
  np.testing.assert_array_equal(out[0], image[0].astype(np.float32))


def test_device_jitter_against_the_pil_path():
  """PIL truncates to uint8 after each adjustment (−0.5 grey level each,
  on average); the device keeps floats. Per adjustment within a grey level,
  all four in a random order within three."""
  images = np.stack([_small(n, 48) for n in NAMES])
  for strengths, tolerance in (((0.4, 0, 0, 0), 1.0), ((0, 0.4, 0, 0), 1.0),
                               ((0, 0, 0.4, 0), 1.0), ((0, 0, 0, 0.1), 1.5),
                               ((0.4, 0.4, 0.4, 0.1), 3.0)):
    params = [augment.color_jitter_params(np.random.default_rng(s),
                                          *strengths, p=1.0)
              for s in range(len(images))]
    got = _device(images, params)
    for seed, (image, out) in enumerate(zip(images, got)):
      pil = augment.color_jitter(image, np.random.default_rng(seed),
                                 *strengths, p=1.0)
      assert np.abs(out - pil).mean() <= tolerance, strengths


def test_jitter_params_draw_what_the_pil_path_draws():
  for p in (0.0, 0.5, 1.0):
    for seed in range(5):
      a, b = np.random.default_rng(seed), np.random.default_rng(seed)
      factors, order = augment.color_jitter_params(a, p=p)
      augment.color_jitter(np.zeros((2, 2, 3), np.uint8), b, p=p)
      assert a.random() == b.random()
      assert sorted(order) == [0, 1, 2, 3]
      if p == 0:
        np.testing.assert_array_equal(factors, augment.NEUTRAL_JITTER)
