"""Image augmentation: decode, crop and flip on the host (PIL), colour
jitter on the host (PIL, torchvision's PIL backend) or on device (jnp,
torchvision's tensor backend), normalisation on device."""
from __future__ import annotations

import io
import math

import jax
import jax.numpy as jnp
import numpy as np
import simplejpeg
from PIL import Image, ImageEnhance

from cliplite_jax.data import decode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def crop_box(height: int, width: int, rng: np.random.Generator,
             scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """torchvision's RandomResizedCrop.get_params → (top, left, h, w).

  Tries 10 times to sample a box of area fraction in `scale` and aspect ratio
  (log-uniform) in `ratio` that fits; falls back to a centre crop with the
  ratio clamped into range.
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    w, h = int(round(height * ratio[1])), height
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(image: np.ndarray, rng: np.random.Generator,
                        size: int, scale=(0.2, 1.0),
                        ratio=(3 / 4, 4 / 3)) -> np.ndarray:
  """torchvision's RandomResizedCrop on decoded pixels, its reference form:
  uint8 [H, W, C] → uint8 [size, size, C], the `crop_box` cut out and
  resized bilinearly (PIL, antialiased)."""
  top, left, h, w = crop_box(*image.shape[:2], rng, scale, ratio)
  crop = Image.fromarray(image[top:top + h, left:left + w])
  return np.asarray(crop.resize((size, size), Image.BILINEAR))


# Undecodable bytes raise these in PIL.
DECODE_ERRORS = decode.DECODE_ERRORS


# `data.resize`: how a crop is resized. "pil": PIL's antialiased bilinear
# (torchvision's), the reference; "opencv": the same filter's support as a
# separable triangle prefilter, then bilinear sampling, in OpenCV (3–6×
# faster on a COCO-sized crop, within 2 grey levels of PIL on average).
RESIZES = ("pil", "opencv")


def _triangle(scale: float) -> np.ndarray | None:
  """The prefilter along an axis shrunk `scale` times, normalised, or None
  when it would be one tap. PIL's bilinear weights an input pixel by a
  triangle `scale` pixels wide each side; bilinear sampling afterwards
  adds a triangle 1 pixel wide, so the prefilter is the triangle of the
  variance left: sqrt(scale² − 1) pixels wide each side."""
  width = np.sqrt(max(scale * scale - 1, 0.0))
  radius = int(np.ceil(width)) - 1
  if radius < 1:
    return None
  weights = np.maximum(0, 1 - np.abs(np.arange(-radius, radius + 1)) / width)
  return (weights / weights.sum()).astype(np.float32)


def resize_opencv(crop: np.ndarray, size: int) -> np.ndarray:
  """uint8 [h, w, 3] → uint8 [size, size, 3], antialiased: each shrunk
  axis blurred by `_triangle`, then bilinear sampling at the output
  pixels' centres (OpenCV's and PIL's alignment). Within 2 grey levels of
  PIL's resize on average (tests/test_augment.py)."""
  import cv2  # the [opencv] extra; only for data.resize="opencv"
  height, width = crop.shape[:2]
  kx, ky = _triangle(width / size), _triangle(height / size)
  if kx is not None or ky is not None:
    one = np.ones(1, np.float32)
    crop = cv2.sepFilter2D(np.ascontiguousarray(crop), -1,
                           one if kx is None else kx,
                           one if ky is None else ky,
                           borderType=cv2.BORDER_REFLECT_101)
  return cv2.resize(np.ascontiguousarray(crop), (size, size),
                    interpolation=cv2.INTER_LINEAR)


def decode_random_resized_crop(data: bytes, rng: np.random.Generator,
                               size: int, scale=(0.2, 1.0),
                               ratio=(3 / 4, 4 / 3),
                               resize: str = "pil") -> np.ndarray | None:
  """`random_resized_crop` of an encoded image, decoding only what the crop
  needs: uint8 [size, size, 3], or None when the bytes do not decode.
  `resize` "opencv" resizes with `resize_opencv` instead of PIL.

  The reference is `random_resized_crop(decode.decode(data), ...)`: the
  pixels of the one decoder (EXIF orientation applied, 16-bit grey reduced
  to 8 bits; see data/decode.py). The crop box is drawn from the header's
  size, turned upright (the same draws as the reference). JPEGs decode with
  simplejpeg (libjpeg-turbo: the pixels PIL decodes, faster), others with
  PIL; then the box is cut out and resized as the reference does, to the
  same pixels. Only a JPEG whose crop is at least 6k times the output on
  both sides (a phone photo, a small output) differs: it is decoded at 1/k
  scale in the DCT domain (k = 2, 4, 8; libjpeg's scaled IDCT) and the
  scaled box resized from it, within a grey level of the reference (at 2k
  times, sharp photos differed by 1.6). Tested against the reference on
  photographs in tests/test_augment.py.
  """
  try:
    decoded = _decode_jpeg_for_crop(data, rng, size, scale, ratio)
    if decoded is None:
      with Image.open(io.BytesIO(data)) as image:
        turn = decode.orientation(image)
        width, height = decode.upright_size(*image.size, turn)
        box = crop_box(height, width, rng, scale, ratio)
        reduce = _reduction(box, size)
        if reduce > 1 and image.format == "JPEG":
          image.draft("RGB", (-(-image.width // reduce),
                              -(-image.height // reduce)))
        decoded = (decode.upright(decode.rgb(image), turn), (height, width),
                   box)
  except DECODE_ERRORS:
    return None
  image, (height, width), (top, left, h, w) = decoded
  if resize == "opencv":
    pixels = np.asarray(image)
    # A DCT-reduced decode is smaller: its box is scaled, to whole pixels.
    sy, sx = pixels.shape[0] / height, pixels.shape[1] / width
    y0, x0 = round(top * sy), round(left * sx)
    y1 = max(round((top + h) * sy), y0 + 1)
    x1 = max(round((left + w) * sx), x0 + 1)
    return resize_opencv(pixels[y0:y1, x0:x1], size)
  if isinstance(image, np.ndarray) and image.shape[:2] == (height, width):
    crop = Image.fromarray(image[top:top + h, left:left + w])
    return np.asarray(crop.resize((size, size), Image.BILINEAR))
  if isinstance(image, np.ndarray):
    image = Image.fromarray(image)
  if image.size == (width, height):
    crop = image.crop((left, top, left + w, top + h))
    return np.asarray(crop.resize((size, size), Image.BILINEAR))
  sx, sy = image.width / width, image.height / height  # decoded smaller
  return np.asarray(image.resize(
      (size, size), Image.BILINEAR,
      box=(left * sx, top * sy, (left + w) * sx, (top + h) * sy)))


def _reduction(box: tuple[int, int, int, int], size: int) -> int:
  """The DCT-domain scale 1/k to decode a crop `box` for a `size` output."""
  reduce = 1
  while reduce < 8 and min(box[2:]) >= 6 * reduce * size:
    reduce *= 2
  return reduce


def _decode_jpeg_for_crop(data, rng, size, scale, ratio):
  """simplejpeg's decode of a YCbCr or grey JPEG → (upright pixels uint8
  [h, w, 3], upright (H, W), crop box), or None for anything else (PIL
  decodes it)."""
  if data[:2] != b"\xff\xd8":
    return None
  try:
    height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
  except ValueError:
    return None  # PIL decides (and names) what is wrong
  if colorspace not in ("YCbCr", "Gray"):
    return None  # e.g. CMYK: PIL's conversion is the reference
  turn = 1
  if decode.jpeg_may_turn(data):  # EXIF or XMP: PIL reads the orientation
    with Image.open(io.BytesIO(data)) as image:
      turn = decode.orientation(image)
  upright_width, upright_height = decode.upright_size(width, height, turn)
  box = crop_box(upright_height, upright_width, rng, scale, ratio)
  reduce = _reduction(box, size)
  try:
    pixels = simplejpeg.decode_jpeg(
        data, "RGB", min_height=-(-height // reduce),
        min_width=-(-width // reduce))
  except ValueError as e:  # truncated or corrupt past the header
    raise OSError(str(e)) from e
  return (decode.upright_pixels(pixels, turn),
          (upright_height, upright_width), box)


def color_jitter(image: np.ndarray, rng: np.random.Generator,
                 brightness: float = 0.4, contrast: float = 0.4,
                 saturation: float = 0.4, hue: float = 0.1,
                 p: float = 0.8) -> np.ndarray:
  """torchvision's RandomApply([ColorJitter(b, c, s, h)], p) on PIL images.

  With probability `p`, applies brightness, contrast and saturation factors
  drawn uniformly from [max(0, 1 − x), 1 + x] and a hue shift drawn from
  [−hue, hue] (fraction of the colour wheel), in a random order, each the
  way torchvision's PIL backend does it; an adjustment of strength 0 is left
  out, as in torchvision. uint8 [H, W, 3] → uint8 [H, W, 3].
  """
  if rng.random() >= p:
    return image
  factors = {
      "brightness": rng.uniform(max(0.0, 1 - brightness), 1 + brightness),
      "contrast": rng.uniform(max(0.0, 1 - contrast), 1 + contrast),
      "saturation": rng.uniform(max(0.0, 1 - saturation), 1 + saturation),
      "hue": rng.uniform(-hue, hue),
  }
  enhancers = {"brightness": ImageEnhance.Brightness,
               "contrast": ImageEnhance.Contrast,
               "saturation": ImageEnhance.Color}
  pil = Image.fromarray(image)
  strengths = {"brightness": brightness, "contrast": contrast,
               "saturation": saturation, "hue": hue}
  for name in np.asarray(list(factors))[rng.permutation(4)]:
    if strengths[name] == 0:
      continue
    if name == "hue":
      pil = _shift_hue(pil, factors["hue"])
    else:
      pil = enhancers[name](pil).enhance(factors[name])
  return np.asarray(pil)


# Factors that leave an image as it is: brightness, contrast, saturation, hue.
NEUTRAL_JITTER = (1.0, 1.0, 1.0, 0.0)


def color_jitter_params(rng: np.random.Generator, brightness: float = 0.4,
                        contrast: float = 0.4, saturation: float = 0.4,
                        hue: float = 0.1, p: float = 0.8
                        ) -> tuple[np.ndarray, np.ndarray]:
  """`color_jitter`'s random draws, for `apply_color_jitter` on device:
  (factors float32 [4]: brightness, contrast, saturation, hue shift;
  order int32 [4]: the adjustments' indices in the order applied).

  Draws exactly what `color_jitter` draws, so either path leaves the rest of
  the stream's randomness as it is; not applied (probability 1 − p) and
  strength-0 adjustments get the neutral factor, which leaves the image as
  it is, as torchvision's skipping does.
  """
  if rng.random() >= p:
    return (np.asarray(NEUTRAL_JITTER, np.float32),
            np.arange(4, dtype=np.int32))
  factors = np.asarray([
      rng.uniform(max(0.0, 1 - brightness), 1 + brightness),
      rng.uniform(max(0.0, 1 - contrast), 1 + contrast),
      rng.uniform(max(0.0, 1 - saturation), 1 + saturation),
      rng.uniform(-hue, hue)], np.float32)
  order = rng.permutation(4).astype(np.int32)
  for i, strength in enumerate((brightness, contrast, saturation, hue)):
    if strength == 0:
      factors[i] = NEUTRAL_JITTER[i]
  return factors, order


def _grayscale(rgb: jnp.ndarray) -> jnp.ndarray:
  """torchvision's rgb_to_grayscale: [..., 3] → [..., 1]."""
  return (0.2989 * rgb[..., 0:1] + 0.587 * rgb[..., 1:2]
          + 0.114 * rgb[..., 2:3])


def _rgb_to_hsv(rgb: jnp.ndarray) -> tuple[jnp.ndarray, ...]:
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  maxc, minc = rgb.max(-1), rgb.min(-1)
  flat = maxc == minc
  chroma = maxc - minc
  s = chroma / jnp.where(flat, 1.0, maxc)
  divisor = jnp.where(flat, 1.0, chroma)
  rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
  h = jnp.where(maxc == r, bc - gc,
                jnp.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
  h = jnp.where(flat, 0.0, h)
  return jnp.mod(h / 6.0 + 1.0, 1.0), s, maxc


def _hsv_to_rgb(h, s, v) -> jnp.ndarray:
  i = jnp.floor(h * 6.0)
  f = h * 6.0 - i
  i = jnp.mod(i, 6).astype(jnp.int32)[..., None]
  p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
  q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
  t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
  sectors = jnp.stack([jnp.stack(c, -1) for c in (
      (v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))], -2)
  return jnp.take_along_axis(sectors, i[..., None], axis=-2)[..., 0, :]


def _adjust_one(image: jnp.ndarray, factors: jnp.ndarray,
                order: jnp.ndarray) -> jnp.ndarray:
  """One image in [0, 1], [H, W, 3]: the four adjustments in `order`."""
  def brightness(x):
    return jnp.clip(factors[0] * x, 0.0, 1.0)

  def contrast(x):
    mean = _grayscale(x).mean()
    return jnp.clip(factors[1] * x + (1.0 - factors[1]) * mean, 0.0, 1.0)

  def saturation(x):
    return jnp.clip(factors[2] * x + (1.0 - factors[2]) * _grayscale(x),
                    0.0, 1.0)

  def hue(x):
    h, s, v = _rgb_to_hsv(x)
    shifted = _hsv_to_rgb(jnp.mod(h + factors[3], 1.0), s, v)
    return jnp.where(factors[3] == 0, x, shifted)

  for position in range(4):
    image = jax.lax.switch(order[position],
                           (brightness, contrast, saturation, hue), image)
  return image


def apply_color_jitter(images: jnp.ndarray, factors: jnp.ndarray,
                       order: jnp.ndarray) -> jnp.ndarray:
  """torchvision's ColorJitter on float tensors, on device, per example.

  images uint8 or float [B, H, W, 3] in [0, 255]; factors float32 [B, 4]
  and order int32 [B, 4] from `color_jitter_params`. Returns float32
  [B, H, W, 3] in [0, 255], unrounded: adjust_brightness / _contrast
  (towards the mean grey level) / _saturation (towards each pixel's grey)
  blend and clamp to [0, 1], adjust_hue rotates the hue of an HSV round
  trip, each as torchvision computes them on float images. Neutral factors
  leave an image exactly as it is.
  """
  pixels = images.astype(jnp.float32)
  jittered = jax.vmap(_adjust_one)(pixels / 255.0, factors, order) * 255.0
  # Exactly the input where nothing applies (x / 255 · 255 can round).
  neutral = jnp.all(factors == jnp.asarray(NEUTRAL_JITTER), axis=-1)
  return jnp.where(neutral[:, None, None, None], pixels, jittered)


def _shift_hue(image: Image.Image, shift: float) -> Image.Image:
  """Rotates the hue channel by `shift` turns (uint8 wrap-around, as PIL HSV)."""
  h, s, v = image.convert("HSV").split()
  # Truncation toward zero, then uint8 wrap-around: what torchvision does.
  h = np.asarray(h, np.uint8) + np.uint8(int(shift * 255) % 256)
  return Image.merge("HSV", (Image.fromarray(h, "L"), s, v)).convert("RGB")


def center_crop_resize(image: np.ndarray, size: int,
                       crop_fraction: float = 1.0) -> np.ndarray:
  """Evaluation transform: central square of `crop_fraction` of the short side,
  resized bilinearly; uint8 [H, W, C] → uint8 [size, size, C]."""
  height, width = image.shape[:2]
  side = int(round(min(height, width) * crop_fraction))
  top, left = (height - side) // 2, (width - side) // 2
  crop = image[top:top + side, left:left + side]
  if crop.shape[0] == size and crop.shape[1] == size:
    return np.ascontiguousarray(crop)
  return np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR))


def pixel_stats(config) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) per RGB channel in [0, 1] units that `config.model`'s
  images are normalised with: `model.pixel_mean` / `model.pixel_std`
  (a released model's preprocessor's), ImageNet's when absent."""
  model = config.model
  return (tuple(model.get("pixel_mean", IMAGENET_MEAN)),
          tuple(model.get("pixel_std", IMAGENET_STD)))


def normalize(images: jnp.ndarray,
              stats: tuple = (IMAGENET_MEAN, IMAGENET_STD)) -> jnp.ndarray:
  """uint8 [..., 3] in [0, 255] → float32 (x/255 - mean) / std, `stats`
  = (mean, std) per channel (`pixel_stats`)."""
  mean = jnp.asarray(stats[0], jnp.float32) * 255.0
  std = jnp.asarray(stats[1], jnp.float32) * 255.0
  return (images.astype(jnp.float32) - mean) / std
