"""A trained model outside its workdir: embed images and texts.

  model = cliplite_jax.load("workdir")            # latest checkpoint
  image_emb = model.encode_images(["a.jpg", "b.png"])   # float32 [2, D]
  text_emb = model.encode_texts(["a dog on a beach"])   # float32 [1, D]
  model.similarity(image_emb, text_emb)                 # cosine [2, 1]

Images are decoded as training and evaluation decode them (data/decode.py:
EXIF orientation applied, 16-bit grey reduced to 8 bits) and preprocessed as
evaluation does (the central square, resized to the checkpoint's image
size), texts cleaned and tokenised with the run's own tokenizer; both go
through the jitted encoders of `features.make_encoders` in batches sharded
over every local device.

`check_out` and `saved_config` are the checks the embed and export commands
share, made before anything is restored.
"""
from __future__ import annotations

import collections
import os
import tempfile
from concurrent import futures
from typing import Iterator, Sequence

import numpy as np
from absl import logging
from PIL import Image

from cliplite_jax import config_io, run_dir

from cliplite_jax import features

from cliplite_jax.data import augment, decode, text as text_lib
from cliplite_jax.training import parallel


class UnreadableImageError(ValueError):
  """A file that does not decode as an image."""


def check_out(out: str | None, flag: str = "--out") -> None:
  """UserError unless `out` can become a new output directory: absent
  (missing parents are made) or an empty directory, in a writable place.
  The embed and export commands call it before restoring anything, so a bad
  `out` costs nothing and writes nothing (and never mixes one model's files
  with another's)."""
  if not out or not out.strip("/").strip():
    raise config_io.UserError(f"{flag} is empty; name a new directory")
  if "://" in out:
    raise config_io.UserError(f"{flag} {out}: write to a local directory "
                              f"(then copy it, e.g. gsutil -m cp -r)")
  if not os.path.lexists(out):
    check_creatable(out, flag)
    return
  try:
    unusable = not os.path.isdir(out) or bool(os.listdir(out))
  except OSError as e:  # e.g. a directory we may not list
    raise config_io.UserError(f"{flag} {out}: {e.strerror or e}") from e
  if unusable:
    raise config_io.UserError(f"{flag} {out} exists and is not an empty "
                              f"directory; name a new one")
  if not _writable(out):
    raise config_io.UserError(f"{flag} {out} is not writable; name a new "
                              f"directory elsewhere")


def staging_dir(out: str) -> str:
  """A new hidden directory beside `out` (its parents made) for an export
  to be written into, then moved to `out` by `publish`."""
  parent = os.path.dirname(os.path.abspath(out.rstrip("/")))
  os.makedirs(parent, exist_ok=True)
  return tempfile.mkdtemp(
      prefix=f".{os.path.basename(out.rstrip('/'))}.partial-", dir=parent)


def publish(staging: str, out: str) -> None:
  """Moves a finished export from its `staging_dir` to `out` (new, or
  empty: `check_out`), with
  the permissions the umask gives (mkdtemp's and safetensors' are
  owner-only). `out` is complete or absent."""
  umask = os.umask(0)
  os.umask(umask)
  for root, folders, files in os.walk(staging):
    os.chmod(root, 0o777 & ~umask)
    for name in files:
      os.chmod(os.path.join(root, name), 0o666 & ~umask)
  out = out.rstrip("/")
  if os.path.isdir(out):
    os.rmdir(out)  # empty (check_out): the export takes its place
  os.rename(staging, out)


def _writable(directory: str) -> bool:
  """Whether a folder can be made in `directory`: tried (and removed), not
  asked, since permission bits do not tell /proc, /sys or a read-only
  mount."""
  try:
    os.rmdir(tempfile.mkdtemp(prefix=".cliplite_check_", dir=directory))
  except OSError:
    return False
  return True


def check_creatable(path: str, flag: str) -> None:
  """UserError unless the new file or directory `path` (and its missing
  parents) can be made: its nearest existing ancestor is a writable
  directory."""
  place = os.path.dirname(os.path.abspath(path))
  while not os.path.lexists(place):
    place = os.path.dirname(place)
  if not os.path.isdir(place):
    raise config_io.UserError(f"{flag} {path}: {place} is a file, not a "
                              f"directory; name a path in a directory")
  if not _writable(place):
    raise config_io.UserError(f"{flag} {path}: {place} is not writable; "
                              f"name a path elsewhere")


def read_image(path: str | os.PathLike) -> np.ndarray:
  """An image file → uint8 [H, W, 3] RGB, decoded as training and
  evaluation decode it (`data.decode`: EXIF orientation applied, 16-bit
  grey reduced to 8 bits). UnreadableImageError (naming the file) if it does
  not decode."""
  try:
    return decode.read(path)
  except decode.DECODE_ERRORS as e:
    raise UnreadableImageError(f"{path}: not a readable image ({e})") from e


def as_pixels(item) -> np.ndarray:
  """A path, PIL image or uint8 array ([H, W], [H, W, 3] or [H, W, 4]) →
  uint8 [H, W, 3]. A PIL image is taken as it stands (16-bit grey reduced
  to 8 bits, no EXIF turn: it may have been turned already); a path is
  decoded as `read_image` does."""
  if isinstance(item, (str, os.PathLike)):
    return read_image(item)
  if isinstance(item, Image.Image):
    return np.asarray(decode.rgb(item))
  pixels = np.asarray(item)
  if pixels.dtype != np.uint8:
    raise TypeError(f"image arrays must be uint8 in [0, 255], not "
                    f"{pixels.dtype}")
  if pixels.ndim == 2:
    pixels = np.repeat(pixels[..., None], 3, axis=-1)
  if pixels.ndim != 3 or pixels.shape[-1] not in (3, 4):
    raise ValueError(f"an image array must be [H, W], [H, W, 3] or "
                     f"[H, W, 4], not {list(pixels.shape)}")
  if min(pixels.shape[:2]) == 0:
    raise ValueError(f"an image array has no pixels: {list(pixels.shape)}")
  return pixels[..., :3]


def image_batches(items: Sequence, image_size: int, batch_size: int,
                  skip_unreadable: bool = False, num_threads: int = 4
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Preprocessed batches of `items` (paths, PIL images or uint8 arrays).

  Yields (positions int64 [b], images uint8 [b, S, S, 3]) with b ≤
  batch_size, in order; decoding runs in `num_threads` threads, one batch
  ahead. An unreadable file raises UnreadableImageError, or with
  `skip_unreadable` is left out (its position is missing).
  """
  def prepare(item):
    try:
      return augment.center_crop_resize(as_pixels(item), image_size)
    except UnreadableImageError:
      if skip_unreadable:
        return None
      raise

  with futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
    pending = collections.deque()

    def finish():
      start, jobs = pending.popleft()
      images = [job.result() for job in jobs]
      kept = [i for i, image in enumerate(images) if image is not None]
      return (np.asarray(kept, np.int64) + start,
              np.stack([images[i] for i in kept]) if kept
              else np.zeros((0, image_size, image_size, 3), np.uint8))

    for start in range(0, len(items), batch_size):
      pending.append((start, [pool.submit(prepare, item)
                              for item in items[start:start + batch_size]]))
      if len(pending) > 1:
        yield finish()
    while pending:
      yield finish()


def l2_normalize(x: np.ndarray) -> np.ndarray:
  """Rows of float [N, D] scaled to unit length (zero rows stay zero)."""
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class Model:
  """A restored checkpoint's encoders (see the module doc).

  Attributes:
    workdir, step: where it was restored from.
    config: the run's config (ml_collections).
    image_size: the side of the square images the tower sees.
    embed_dim: D, the width of both embeddings.
    feature_dim: F, the width of the image tower's pooled features.
    batch_size: images or texts per jitted call (a multiple of the
      device count).
  """

  def __init__(self, workdir: str, step: int | None = None,
               batch_size: int | None = None):
    self.workdir = workdir
    self.config = run_dir.saved_config(workdir)
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)  # orbax's read-only notices
    try:
      self.step, self._model, self._variables, self._tokenizer, self._mesh = (
          run_dir.restore(workdir, self.config, step))
    finally:
      logging.set_verbosity(verbosity)
    self._image_fn, self._text_fn = features.make_encoders(
        self._model, self._variables, self._mesh,
        parallel.compiler_options(self.config),
        augment.pixel_stats(self.config))
    self.image_size = self.config.data.image_size
    self.embed_dim = self.config.model.proj_dim
    self.feature_dim = self._model.image_encoder.num_features
    if batch_size is not None and batch_size < 1:
      raise config_io.UserError(f"batch_size must be ≥ 1, not {batch_size}")
    self.batch_size = features.global_batch_size(
        batch_size or self.config.eval.batch_size, self._mesh)

  def encode_image_batch(self, images: np.ndarray, normalize: bool = True
                         ) -> dict[str, np.ndarray]:
    """uint8 [b, S, S, 3] (S = image_size, b ≤ batch_size) →
    {"embeddings": float32 [b, D] (unit length if `normalize`),
    "features": float32 [b, F] (the tower's pooled features)}."""
    out = features.batched_apply(
        lambda x: self._image_fn({"images": x}), (images,), self.batch_size,
        self._mesh)
    out = {k: np.asarray(out[k], np.float32) for k in ("embeddings",
                                                       "features")}
    if normalize:
      out["embeddings"] = l2_normalize(out["embeddings"])
    return out

  def encode_images(self, images, normalize: bool = True,
                    pooled: bool = False) -> np.ndarray:
    """Images → float32 [N, D] embeddings (unit length if `normalize`), or
    with `pooled` the tower's features [N, F] (for linear probes).

    `images`: uint8 [N, H, W, 3]; one image (a path, PIL image, or uint8
    [H, W] / [H, W, 3]); or a sequence of paths, PIL images and uint8
    arrays of any sizes.
    """
    if isinstance(images, (str, os.PathLike, Image.Image)) or (
        isinstance(images, np.ndarray) and images.ndim in (2, 3)):
      images = [images]  # one image
    key = "features" if pooled else "embeddings"
    parts = [self.encode_image_batch(batch, normalize)[key]
             for _, batch in image_batches(images, self.image_size,
                                           self.batch_size)]
    if not parts:
      return np.zeros((0, self.feature_dim if pooled else self.embed_dim),
                      np.float32)
    return np.concatenate(parts)

  def encode_split(self, name: str, split: str,
                   data_dir: str | None = None) -> dict[str, np.ndarray]:
    """Every usable image of a dataset split (a TFDS name or a prepared
    directory, read as evaluation reads it) → {"embeddings" float32 [N, D]
    (unit length), "features" float32 [N, F], "index" int32 [N] (position
    in the split), and the source's labels}. `data_dir` defaults to the
    run's."""
    out = features.extract_images(
        self._image_fn, name, split,
        self.config.data.data_dir if data_dir is None else data_dir,
        self.image_size, self.batch_size, self._mesh,
        self.config.data.num_threads)
    out["embeddings"] = l2_normalize(out["embeddings"])
    return out

  def encode_texts(self, texts: str | Sequence[str],
                   normalize: bool = True) -> np.ndarray:
    """Texts (one string or a sequence) → float32 [N, D], cleaned and
    tokenised as the run's captions were."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
      return np.zeros((0, self.embed_dim), np.float32)
    cleaned = [text_lib.clean_caption(t, self.config.data.max_words)
               for t in texts]
    out = np.asarray(features.batched_apply(
        self._text_fn, text_lib.tokenize(self._tokenizer, cleaned),
        self.batch_size, self._mesh), np.float32)
    return l2_normalize(out) if normalize else out

  @staticmethod
  def similarity(image_embeddings: np.ndarray,
                 text_embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity float32 [N, M] of image rows [N, D] and text rows
    [M, D] (normalised here, so raw embeddings work too)."""
    return l2_normalize(np.asarray(image_embeddings, np.float32)) @ (
        l2_normalize(np.asarray(text_embeddings, np.float32)).T)


def load(workdir: str, step: int | None = None,
         batch_size: int | None = None) -> Model:
  """The checkpoint at `step` (the latest if None) of WORKDIR, ready to
  embed on the devices at hand. `config_io.UserError` (a clear message) for
  a missing workdir, checkpoint or step."""
  return Model(workdir, step, batch_size)
