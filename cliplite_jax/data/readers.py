"""The collections `python -m cliplite_jax.prepare` reads.

Two shapes of input:
  * row sources — a captions file (JSONL, CSV/TSV, Karpathy's JSON) or a
    folder per class — yield `Row`s that name an image file; prepare groups
    a file's rows by image (several rows per image are one example with
    several captions) and reads the images itself;
  * unit sources — webdataset tar shards, a TFDS dataset — yield `Item`s
    with the encoded image, one independent unit (a tar, a slice of a split)
    at a time, so prepare can work on units in parallel.
Every reader streams: nothing holds more than one row or one example.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import glob
import io
import json
import os
import re
import tarfile
from typing import Iterator

from etils import epath

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


@dataclasses.dataclass
class Row:
  """One line of a captions file: an image path (relative to the image
  root), its captions, and optionally its split and class label."""
  image: str
  captions: list[str]
  split: str | None = None
  label: int | None = None
  # Other caption kinds (prepare's --caption_fields): {field: [captions]}.
  fields: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Item:
  """One example read with its image: `image` is the encoded bytes (None
  when missing), `problem` says why it is unusable."""
  key: str
  image: bytes | None
  captions: list[str]
  split: str | None = None
  label: int | None = None
  problem: str | None = None
  # Splits other rows of the same image named (the first row's is kept).
  other_splits: tuple[str, ...] = ()
  fields: dict = dataclasses.field(default_factory=dict)


class SourceError(ValueError):
  """A source that cannot be read; the message names the file and line."""


def _as_captions(value, where: str) -> list[str]:
  if value is None:
    return []
  if isinstance(value, str):
    return [value]
  if isinstance(value, list) and all(isinstance(c, str) for c in value):
    return list(value)
  raise SourceError(f"{where}: captions must be a string or a list of "
                    f"strings, got {type(value).__name__}")


def caption_fields(found, fields: tuple[str, ...], where: str) -> dict:
  """{field: [captions]} of the `fields` a row (a dict-like `found`) has,
  each a string or a list of strings; absent or empty ones are []."""
  return {f: _as_captions(found.get(f) or None, f"{where}: {f}")
          for f in fields}


# A split name becomes part of file names and of "a+b" split expressions.
SPLIT_NAME = re.compile(r"[A-Za-z0-9_]+")


def check_split(split, where: str) -> str | None:
  """`split` if it is None or a name of letters, digits and _; else
  SourceError naming `where`."""
  if split is None or (isinstance(split, str) and SPLIT_NAME.fullmatch(split)):
    return split
  raise SourceError(f"{where}: split {split!r} is not a name of letters, "
                    f"digits and _")


def _check_label(label, where: str) -> int | None:
  if label is None or (isinstance(label, int) and not isinstance(label, bool)
                       and label >= 0):
    return label
  raise SourceError(f"{where}: label {label!r} is not a class index (an "
                    f"integer ≥ 0; names go in --class_names)")


def utf8_error(path: str, data: bytes, error: UnicodeDecodeError,
               first_line: int = 1) -> str:
  """One line naming the file, line and byte that are not UTF-8; `data`
  is the text from line `first_line` on."""
  line = data.count(b"\n", 0, error.start) + first_line
  column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
  return (f"{path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x} "
          f"at column {column}); save the file as UTF-8")


@contextlib.contextmanager
def _open_text(path: str) -> Iterator[Iterator[str]]:
  """The lines of a local or gs:// UTF-8 text file, line breaks kept (CSV
  fields may hold them) and a leading byte-order mark dropped (Excel's "CSV
  UTF-8"). Decoded line by line, so bytes that are not UTF-8 are a
  SourceError naming their line."""
  with epath.Path(path).open("rb") as f:
    def lines():
      for number, raw in enumerate(f, 1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
          raw = raw[3:]
        try:
          yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
          raise SourceError(utf8_error(path, raw, e, number)) from None
    yield lines()


def jsonl_rows(path: str, fields: tuple[str, ...] = ()) -> Iterator[Row]:
  """{"image": "rel/path.jpg", "captions": [...] or "caption": "...",
  optional "split", optional "label", and each of `fields`} per line."""
  with _open_text(path) as lines:
    for number, line in enumerate(lines, 1):
      if not line.strip():
        continue
      where = f"{path}:{number}"
      try:
        obj = json.loads(line)
      except ValueError as e:
        raise SourceError(f"{where}: not JSON ({e})") from e
      if not isinstance(obj, dict) or not isinstance(obj.get("image"), str):
        raise SourceError(f'{where}: each line must be an object with an '
                          f'"image" path')
      captions = _as_captions(obj.get("captions", obj.get("caption")), where)
      yield Row(obj["image"], captions, check_split(obj.get("split"), where),
                _check_label(obj.get("label"), where),
                caption_fields(obj, fields, where))


def csv_rows(path: str, image_column: str, caption_column: str,
             split_column: str, delimiter: str,
             fields: tuple[str, ...] = ()) -> Iterator[Row]:
  """One caption per row; a header names the columns. A TSV's fields are
  taken as they are (no quoting: a caption may start with a quote)."""
  quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
  with _open_text(path) as lines:
    reader = csv.DictReader(lines, delimiter=delimiter, quoting=quoting)
    try:
      yield from _csv_rows(path, reader, image_column, caption_column,
                           split_column, fields)
    except csv.Error as e:  # e.g. a file whose lines end in a lone \r
      raise SourceError(f"{path}:{max(reader.line_num, 1)}: {e}; save the "
                        f"file with \\n or \\r\\n line ends") from None


def _csv_rows(path: str, reader: csv.DictReader, image_column: str,
              caption_column: str, split_column: str,
              fields: tuple[str, ...]) -> Iterator[Row]:
  """`csv_rows` of an open reader."""
  columns = reader.fieldnames or []
  for needed in (image_column, caption_column, *fields):
    if needed not in columns:
      raise SourceError(
          f"{path}: no column {needed!r} (it has {columns}); name the "
          f"columns with --image_column / --caption_column")
  for row in reader:
    where = f"{path}:{reader.line_num}"
    if row[image_column] is None or row[caption_column] is None:
      raise SourceError(f"{where}: fewer fields than the header's "
                        f"{len(columns)}")
    yield Row(row[image_column], _as_captions(row[caption_column], where),
              check_split(row.get(split_column) or None, where),
              fields=caption_fields(row, fields, where))


def karpathy_rows(path: str) -> Iterator[Row]:
  """Karpathy's split file (dataset_coco.json, dataset_flickr30k.json):
  {"images": [{"filename", "filepath"?, "split", "sentences": [{"raw"}]}]}.
  The file is one JSON object, read whole (30 MB for Flickr30k)."""
  data = epath.Path(path).read_bytes()
  try:
    images = json.loads(data.decode("utf-8"))["images"]
  except UnicodeDecodeError as e:
    raise SourceError(utf8_error(path, data, e)) from None
  except (ValueError, KeyError, TypeError) as e:
    raise SourceError(f"{path}: not a Karpathy split file ({e!r})") from e
  for number, image in enumerate(images):
    where = f"{path}: images[{number}]"
    try:
      name = os.path.join(image.get("filepath", ""), image["filename"])
      captions = [s["raw"] for s in image["sentences"]]
      split = image["split"]
    except (KeyError, TypeError, AttributeError) as e:
      raise SourceError(f"{where}: needs filename, split and sentences "
                        f"[{{raw}}] ({e!r})") from e
    yield Row(name, _as_captions(captions, where), check_split(split, where))


def folder_rows(root: str) -> tuple[list[str], Iterator[Row]]:
  """A folder per class (sorted names are label 0, 1, …; hidden folders
  such as .ipynb_checkpoints are not classes) of image files, found by
  extension (others and subfolders are not read) → (class folder names,
  rows with a label and no captions)."""
  base = epath.Path(root)
  classes = sorted(p.name for p in base.iterdir()
                   if p.is_dir() and not p.name.startswith("."))
  if not classes:
    raise SourceError(f"{root}: no class folders")

  def rows():
    for label, name in enumerate(classes):
      for path in sorted((base / name).iterdir()):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
          yield Row(f"{name}/{path.name}", [], None, label)
  return classes, rows()


def read_image(root: str, relative: str) -> Item:
  """The encoded bytes of an image file of a row source."""
  try:
    return Item(relative, (epath.Path(root) / relative).read_bytes(), [])
  except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
    return Item(relative, None, [], problem="missing")
  except OSError as e:  # a symlink loop, a name too long, no permission
    return Item(relative, None, [],
                problem=f"missing ({e.strerror or type(e).__name__})")
  except ValueError:  # a NUL byte in the path
    return Item(relative, None, [], problem="missing (NUL byte in the path)")


def webdataset_shards(spec: str) -> list[str]:
  """The .tar files a webdataset spec names: a directory, a glob, or one
  file, sorted."""
  if "://" in spec:
    base = epath.Path(spec)
    files = (sorted(str(p) for p in base.glob("*.tar")) if base.is_dir()
             else sorted(str(p) for p in epath.Path(os.path.dirname(spec))
                         .glob(os.path.basename(spec))))
  elif os.path.isdir(spec):
    files = sorted(glob.glob(os.path.join(spec, "*.tar")))
  else:
    files = sorted(glob.glob(spec))
  if not files:
    raise SourceError(f"{spec}: no .tar shards")
  return files


def webdataset_items(shard: str,
                     fields: tuple[str, ...] = ()) -> Iterator[Item]:
  """img2dataset's layout: members KEY.jpg (or another image extension)
  with KEY.txt and/or KEY.json beside it. The captions are the json's
  "captions" list (or its "caption"), else the txt; `fields`, the json's
  keys of those names."""
  def finish(key, parts):
    image = next((data for ext, data in parts.items()
                  if ext in IMAGE_EXTENSIONS), None)
    captions, found = [], {f: [] for f in fields}
    if ".json" in parts:
      try:
        meta = json.loads(parts[".json"])
        captions = _as_captions(meta.get("captions", meta.get("caption")),
                                f"{shard}:{key}.json")
      except (ValueError, AttributeError, SourceError):
        captions, meta = [], {}
      try:
        found = caption_fields(meta, fields, f"{shard}:{key}.json")
      except (AttributeError, SourceError):
        pass  # a field that is not text: none for this example
    if not captions and ".txt" in parts:
      captions = [parts[".txt"].decode("utf-8", errors="replace")]
    return Item(key, image, captions,
                problem=None if image is not None else "missing",
                fields=found)

  key, parts = None, {}
  with epath.Path(shard).open("rb") as f:
    try:
      with tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
          if not member.isfile():
            continue
          name = os.path.basename(member.name)
          stem, dot, ext = name.partition(".")
          member_key = os.path.join(os.path.dirname(member.name), stem)
          if member_key != key and key is not None:
            yield finish(key, parts)
            parts = {}
          key = member_key
          parts["." + ext.lower() if dot else ""] = tar.extractfile(
              member).read()
    except tarfile.TarError as e:
      # A truncated shard keeps what it held; the rest is counted lost.
      yield Item(f"{shard}:{key}", None, [], problem=f"damaged tar ({e})")
  if key is not None:
    yield finish(key, parts)


def tfds_items(name: str, split: str, start: int, end: int, image_key: str,
               text_key: str, label_key: str, data_dir: str | None
               ) -> Iterator[Item]:
  """Examples [start, end) of a TFDS split, images kept encoded. `text_key`
  is a "/"-path to a text or sequence-of-text feature (e.g. "captions/text"
  for COCO's sequence of {id, text})."""
  import tensorflow_datasets as tfds  # heavy; only this reader needs it
  builder = tfds.builder(name, data_dir=data_dir)
  decoders = {image_key: tfds.decode.SkipDecoding()}
  try:  # random access when prepared as ArrayRecord
    source = builder.as_data_source(split, decoders=decoders)
    examples = (source[i] for i in range(start, end))
  except NotImplementedError:  # TFRecord: read the slice with tf.data
    examples = tfds.as_numpy(builder.as_dataset(
        split=f"{split}[{start}:{end}]", decoders=decoders))
  for index, example in enumerate(examples, start):
    captions = []
    if text_key:
      value = example
      for part in text_key.split("/"):
        value = value[part]
      values = value if hasattr(value, "__len__") and not isinstance(
          value, bytes) else [value]
      captions = [v.decode("utf-8", errors="replace") if isinstance(v, bytes)
                  else str(v) for v in values]
    yield Item(f"{split}/{index}", bytes(example[image_key]), captions, split,
               int(example[label_key]) if label_key else None)


def tfds_splits(name: str, data_dir: str | None) -> tuple[dict[str, int], list]:
  """{split: examples} of a prepared TFDS dataset, and the label feature's
  class names by key (for class sets)."""
  import tensorflow_datasets as tfds
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # TFDS raises several kinds for unknown names
    raise SourceError(f"tfds:{name}: {str(e).splitlines()[0]}") from e
  if not builder.is_prepared():
    raise SourceError(f"tfds:{name} is not prepared under "
                      f"{data_dir or '~/tensorflow_datasets'}: run `tfds "
                      f"build {name}` first")
  splits = {s: info.num_examples for s, info in builder.info.splits.items()}
  return splits, builder.info.features


def image_size(data: bytes) -> tuple[int, int] | None:
  """(width, height) of a fully decodable image, else None."""
  from PIL import Image
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      return image.size
  except Exception:  # PIL raises many kinds on bad bytes; all mean unusable
    return None
