"""Encoded image → upright uint8 RGB pixels: the one decoder of training
(`augment.decode_random_resized_crop`), evaluation (`sources.decode`) and
inference (`inference.read_image`, the embed command), so a file gives the
same pixels wherever it is read.

Two choices make the difference with a bare `Image.open(f).convert("RGB")`:

* EXIF orientation is applied (the tag PIL's `getexif` reports, XMP's
  tiff:Orientation included), as `ImageOps.exif_transpose` and photo viewers
  do: a phone photo stored sideways with "rotate 90" in its EXIF is seen
  upright, in training as at inference. An unreadable EXIF block counts as
  no orientation (the pixels still decode).
* 16-bit grey images (PIL modes "I;16*", and "I", read as 16-bit and clipped
  to [0, 65535]) keep their high byte, v >> 8, as PIL and libpng already do
  for 16-bit colour PNGs; PIL's RGB conversion would clip every value over
  255 to white.

Anything else converts as PIL's `convert("RGB")` does (palette, grey, CMYK;
alpha dropped). An image object handed in by a caller (`rgb`) is taken as it
is: only encoded data carries an orientation to apply.
"""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

# What PIL raises on bytes that do not decode.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
ORIENTATION_TAG = 0x0112
# EXIF orientation → the transpose that makes the image upright (the table
# of PIL's ImageOps.exif_transpose); 1 and unknown values: none.
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def orientation(image: Image.Image) -> int:
  """The EXIF orientation (1–8) of an opened image; 1 when it has none.
  Reads only the header of a JPEG (no pixels are decoded)."""
  try:
    value = image.getexif().get(ORIENTATION_TAG, 1)
  except Exception:  # a malformed EXIF block: PIL raises many kinds
    return 1
  return value if value in TRANSPOSE else 1


def upright_size(width: int, height: int, turn: int) -> tuple[int, int]:
  """(width, height) of a width × height image after the orientation
  `turn` (5–8 swap the sides)."""
  return (height, width) if turn in (5, 6, 7, 8) else (width, height)


def upright(image: Image.Image, turn: int) -> Image.Image:
  """`image` transposed by EXIF orientation `turn` (itself for 1)."""
  method = TRANSPOSE.get(turn)
  return image if method is None else image.transpose(method)


def upright_pixels(pixels: np.ndarray, turn: int) -> np.ndarray:
  """uint8 [H, W, 3] transposed by EXIF orientation `turn`, as `upright`
  does (through PIL, so both give the same pixels)."""
  if turn not in TRANSPOSE:
    return pixels
  return np.asarray(upright(Image.fromarray(pixels), turn))


def rgb(image: Image.Image) -> Image.Image:
  """`image` in mode RGB, 16-bit grey reduced to its high byte (see the
  module doc); other modes as PIL converts them."""
  if image.mode not in WIDE_MODES:
    return image.convert("RGB")  # a loaded copy, even of an RGB image
  wide = np.clip(np.asarray(image, np.int64), 0, 65535)
  return Image.fromarray((wide >> 8).astype(np.uint8), "L").convert("RGB")


def pixels_of(image: Image.Image) -> np.ndarray:
  """An opened, encoded image → upright uint8 [H, W, 3] (decodes it)."""
  return np.asarray(upright(rgb(image), orientation(image)))


def decode(data: bytes) -> np.ndarray:
  """Encoded bytes → upright uint8 [H, W, 3]; raises one of DECODE_ERRORS
  when they do not decode."""
  with Image.open(io.BytesIO(data)) as image:
    return pixels_of(image)


def read(path: str | os.PathLike) -> np.ndarray:
  """An image file → upright uint8 [H, W, 3]; raises one of DECODE_ERRORS
  when it does not decode."""
  with Image.open(path) as image:
    return pixels_of(image)


def jpeg_may_turn(data: bytes) -> bool:
  """Whether a JPEG's header could hold an orientation: an APP1 segment
  (EXIF or XMP) before the scan. False lets the fast path skip PIL's header
  parse (~50 µs) for the usual JPEG; malformed markers say True (PIL then
  reads, or rejects, the header)."""
  position = 2  # after SOI
  while position + 4 <= len(data):
    if data[position] != 0xFF:
      return True
    marker = data[position + 1]
    if marker == 0xFF:  # fill byte
      position += 1
      continue
    if marker == 0xE1:  # APP1
      return True
    if marker == 0xDA:  # start of scan: no metadata segment follows
      return False
    if marker in (0x01, *range(0xD0, 0xD8)):  # no length field
      position += 2
      continue
    position += 2 + int.from_bytes(data[position + 2:position + 4], "big")
  return True
