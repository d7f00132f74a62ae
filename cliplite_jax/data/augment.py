"""Image augmentation on the host (numpy + PIL) and normalisation on device."""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageEnhance

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def random_resized_crop(image: np.ndarray, rng: np.random.Generator,
                        size: int, scale=(0.2, 1.0),
                        ratio=(3 / 4, 4 / 3)) -> np.ndarray:
  """torchvision's RandomResizedCrop: uint8 [H, W, C] → uint8 [size, size, C].

  Tries 10 times to sample a box of area fraction in `scale` and aspect ratio
  (log-uniform) in `ratio` that fits; falls back to a centre crop with the
  ratio clamped into range. Resizes bilinearly.
  """
  height, width = image.shape[:2]
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
      break
  else:
    in_ratio = width / height
    if in_ratio < ratio[0]:
      w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
      w, h = int(round(height * ratio[1])), height
    else:
      w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
  crop = Image.fromarray(image[top:top + h, left:left + w])
  return np.asarray(crop.resize((size, size), Image.BILINEAR))


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


def normalize(images: jnp.ndarray) -> jnp.ndarray:
  """uint8 [..., 3] in [0, 255] → float32 ImageNet-normalised."""
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32) * 255.0
  std = jnp.asarray(IMAGENET_STD, jnp.float32) * 255.0
  return (images.astype(jnp.float32) - mean) / std
