"""The input formats `cliplite_jax.prepare` reads, one row each.

A format is either a row source — a file (or folder) that names image files,
streamed as `readers.Row`s that prepare partitions by image and reads the
images of itself — or a unit source, cut into independent units (a tar
shard, a slice of a TFDS split) whose `readers.Item`s carry their encoded
images. `prepare_options.parse_source` finds a source's format here (by its
"NAME:" prefix, else by `matches`), `spec` fingerprints the formats marked
so, `prepare.plan` asks the row reader or the units, and each unit's worker
reads its items. A new format is one reader in readers.py and one row here.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

from cliplite_jax.data import readers
from cliplite_jax.data.readers import SourceError


@dataclasses.dataclass(frozen=True)
class Planned:
  """A unit source's plan: each unit's arguments (dicts, passed to the
  format's `items`), "captions" or "classes", and the class names if the
  source has them."""
  units: list[dict]
  kind: str
  classes: list[str] | None = None


@dataclasses.dataclass(frozen=True)
class Format:
  """One format (see the module doc).

  explicit: named by a "NAME:" prefix only (else also found by `matches`).
  matches(location) → bool: an unprefixed spec is of this format.
  fingerprinted: a single file; a continued run must find it unchanged.
  rows(location, options) → Iterator[Row]: a row source's rows.
  root(location, options) → str: where a row source's image paths start.
  classes(location) → [str] | None: a row source's class names (a class set).
  plan(location, options, common) → Planned: a unit source's units.
  items(**unit args) → Iterator[Item]: one unit's examples.
  fields: reads prepare's --caption_fields (other caption kinds).
  """
  matches: Callable[[str], bool] = lambda location: False
  explicit: bool = False
  fingerprinted: bool = False
  rows: Callable | None = None
  root: Callable | None = None
  classes: Callable | None = None
  plan: Callable | None = None
  items: Callable | None = None
  fields: bool = False


def _ends(*suffixes: str) -> Callable[[str], bool]:
  return lambda location: location.lower().endswith(suffixes)


def _captions_root(location: str, opts) -> str:
  """--images, else the captions file's directory."""
  return opts.images or os.path.dirname(os.path.abspath(location))


def field_names(text: str) -> tuple[str, ...]:
  """--caption_fields' value ("blip2,rewrite") as a tuple of names."""
  return tuple(f.strip() for f in text.split(",") if f.strip())


def fields_of(opts) -> tuple[str, ...]:
  """The options' --caption_fields as a tuple of names."""
  return field_names(opts.caption_fields)


def _csv(delimiter: str) -> Callable:
  return lambda location, opts: readers.csv_rows(
      location, opts.image_column, opts.caption_column, opts.split_column,
      delimiter, fields_of(opts))


def _plan_webdataset(location: str, opts, common: dict) -> Planned:
  return Planned([dict(shard=s, fields=fields_of(opts), **common)
                  for s in readers.webdataset_shards(location)], "captions")


def _plan_tfds(location: str, opts, common: dict) -> Planned:
  splits, features = readers.tfds_splits(location, opts.data_dir or None)
  if not opts.text_key and not opts.label_key:
    raise SourceError(f"tfds:{location} needs --text_key (a caption set) or "
                      f"--label_key (a class set); its features are "
                      f"{sorted(features.keys())}")
  for key in filter(None, (opts.image_key, opts.text_key.split("/")[0],
                           opts.label_key)):
    if key not in features:
      raise SourceError(f"tfds:{location} has no feature {key!r} (it has "
                        f"{sorted(features.keys())})")
  units, step = [], opts.examples_per_shard
  for tfds_split, count in sorted(splits.items()):
    if common["split"] and common["split"] != tfds_split and len(splits) > 1:
      continue
    units += [dict(name=location, tfds_split=tfds_split, start=start,
                   end=min(count, start + step), image_key=opts.image_key,
                   text_key=opts.text_key, label_key=opts.label_key,
                   data_dir=opts.data_dir or None, **common)
              for start in range(0, count, step)]
  if opts.label_key:
    return Planned(units, "classes",
                   getattr(features[opts.label_key], "names", None))
  return Planned(units, "captions")


def _tfds_items(name, tfds_split, start, end, image_key, text_key, label_key,
                data_dir, **_):
  return readers.tfds_items(name, tfds_split, start, end, image_key, text_key,
                            label_key, data_dir)


# Tried in this order for a spec without a prefix.
FORMATS: dict[str, Format] = {
    "jsonl": Format(_ends(".jsonl"), fingerprinted=True,
                    rows=lambda location, opts: readers.jsonl_rows(
                        location, fields_of(opts)),
                    root=_captions_root, fields=True),
    "csv": Format(_ends(".csv"), fingerprinted=True, rows=_csv(","),
                  root=_captions_root, fields=True),
    "tsv": Format(_ends(".tsv"), fingerprinted=True, rows=_csv("\t"),
                  root=_captions_root, fields=True),
    "karpathy": Format(_ends(".json"), fingerprinted=True,
                       rows=lambda location, opts:
                       readers.karpathy_rows(location),
                       root=_captions_root),
    "folder": Format(explicit=True,
                     rows=lambda location, opts:
                     readers.folder_rows(location)[1],
                     root=lambda location, opts: location,
                     classes=lambda location: readers.folder_rows(location)[0]),
    "webdataset": Format(lambda location: (location.lower().endswith(".tar")
                                           or "*" in location
                                           or os.path.isdir(location)),
                         plan=_plan_webdataset, fields=True,
                         items=lambda shard, fields=(), **_:
                         readers.webdataset_items(shard, fields)),
    "tfds": Format(explicit=True, plan=_plan_tfds, items=_tfds_items),
}


def detect(spec: str) -> tuple[str, str] | None:
  """(format name, location) of a source spec without its split: a
  "NAME:" prefix names the format, else the first format that `matches`;
  None when none does."""
  for name in FORMATS:
    if spec.startswith(name + ":"):
      return name, spec[len(name) + 1:]
  for name, fmt in FORMATS.items():
    if not fmt.explicit and fmt.matches(spec):
      return name, spec
  return None
