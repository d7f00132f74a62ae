"""Prepared datasets: a user's image–caption (or image–class) collection
converted once by `python -m cliplite_jax.prepare` into ArrayRecord shards.

A prepared dataset is a directory (local or gs://):

  dataset_card.json            kind, splits with their shards and counts,
                               skipped rows, caption statistics, classes
  dataset_card.md              the same for people
  SPLIT-IIIII-of-NNNNN.array_record
                               records: msgpack {"key": str, "image": bytes,
                               "captions": [str], "label": int (class sets)}

Opening one reads only the card: the shards' record counts are in it, so a
set of 10M examples opens in the time it takes to read one JSON file, and the
shards are opened lazily, on first read.
"""
from __future__ import annotations

import json
import os

import msgpack
import numpy as np
from array_record.python import array_record_data_source
from etils import epath

CARD = "dataset_card.json"
FORMAT = "cliplite_prepared"
VERSION = 1


def is_prepared_name(name: str) -> bool:
  """Whether a dataset name (data.name, eval.transfer) is a path to a
  prepared dataset rather than a registered name: it starts with "/", ".",
  "~" or has a "://" scheme."""
  return name.startswith(("/", ".", "~")) or "://" in name


def resolve(name: str) -> epath.Path:
  """The prepared dataset directory a name points to."""
  return epath.Path(os.path.expanduser(name) if name.startswith("~") else name)


def read_card(name: str) -> dict:
  """The dataset card of the prepared dataset at `name`.

  Raises FileNotFoundError (naming the prepare command) when the directory
  holds no finished prepared dataset, ValueError when its card is damaged.
  """
  root = resolve(name)
  path = root / CARD
  if not path.exists():
    partial = (root / ".work").exists()
    raise FileNotFoundError(
        f"{root} is not a prepared dataset (no {CARD})"
        + ("; its preparation did not finish: rerun the same prepare command "
           "to continue it" if partial else
           ": make one with `python -m cliplite_jax.prepare --source=... "
           f"--out={root}`"))
  try:
    card = json.loads(path.read_text())
  except ValueError as e:
    raise ValueError(f"{path} is damaged ({e}); rerun prepare with a new "
                     f"--out") from e
  if card.get("format") != FORMAT or card.get("version", 0) > VERSION:
    raise ValueError(f"{path} is not a {FORMAT} v{VERSION} dataset card")
  return card


def split_names(split: str) -> list[str]:
  """TFDS-style "a+b" → ["a", "b"]."""
  return [s.strip() for s in split.split("+") if s.strip()]


class Examples:
  """Random access to one split (or "a+b" splits) of a prepared dataset.

  `examples[i]` is a dict: "key" str, "image" bytes (encoded), "captions"
  list[str], and "label" int for a class set. Picklable (grain workers).
  """

  def __init__(self, name: str, split: str, card: dict | None = None):
    card = card if card is not None else read_card(name)
    root = resolve(name)
    known = card["splits"]
    paths = []
    for part in split_names(split):
      if part not in known:
        raise ValueError(f"prepared dataset {root} has no split {part!r} "
                         f"(it has {sorted(known)}; the config names splits "
                         f"in data.train_split, eval.split, eval.fit_split)")
      paths += [f"{root / shard['file']}[0:{shard['examples']}]"
                for shard in known[part]["shards"] if shard["examples"]]
    if not paths:
      raise ValueError(f"split {split!r} of {root} has no examples")
    self._paths = paths
    self._records = array_record_data_source.ArrayRecordDataSource(paths)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    return msgpack.unpackb(self._records[index], raw=False)

  def __getstate__(self):
    return {"paths": self._paths}

  def __setstate__(self, state):
    self._paths = state["paths"]
    self._records = array_record_data_source.ArrayRecordDataSource(
        self._paths)


def encode_record(key: str, image: bytes, captions: list[str],
                  label: int | None = None) -> bytes:
  """One record of a prepared shard (see the module docstring)."""
  record = {"key": key, "image": image, "captions": list(captions)}
  if label is not None:
    record["label"] = int(label)
  return msgpack.packb(record, use_bin_type=True)


def word_statistics(histogram: list[int]) -> dict:
  """Caption length statistics from a histogram of words per caption
  (index = words, last bin = that many or more)."""
  counts = np.asarray(histogram, np.int64)
  total = int(counts.sum())
  if total == 0:
    return {"captions": 0}
  words = np.arange(len(counts))
  cumulative = np.cumsum(counts)
  def percentile(q):
    return int(np.searchsorted(cumulative, q * total))
  return {"captions": total,
          "mean_words": round(float((counts * words).sum() / total), 2),
          "min_words": int(words[counts > 0][0]),
          "median_words": percentile(0.5),
          "p95_words": percentile(0.95),
          "max_words": int(words[counts > 0][-1])}
