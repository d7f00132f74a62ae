"""Prepared datasets: a user's image–caption (or image–class) collection
converted once by `python -m cliplite_jax.prepare` into ArrayRecord shards.

A prepared dataset is a directory (local or gs://):

  dataset_card.json            kind, splits with their shards and counts,
                               skipped rows, caption statistics, classes
  dataset_card.md              the same for people
  SPLIT-IIIII-of-NNNNN.array_record
                               records: msgpack {"key": str, "image": bytes,
                               "captions": [str], "label": int (class sets),
                               "fields": {name: [str]} (--caption_fields)}

Opening one reads the card (the shards' record counts are in it) and checks
each shard of the opened split against the size and CRC32 the card records,
so a truncated or damaged shard is named in one line before any record is
read (`DamagedShardError`). The check reads every byte once per process (at
several GB/s; each shard once, however often it is opened); remote sets
(gs://) and sets over `CHECKSUM_LIMIT_BYTES` are checked by size only, and
cards written before checksums were recorded are not checked.
"""
from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import sys
import time
import zlib

import msgpack
import numpy as np
from array_record.python import array_record_data_source
from etils import epath

CARD = "dataset_card.json"
FORMAT = "cliplite_prepared"
VERSION = 1
# Above this many bytes in one opened split, shards are checked by size only.
CHECKSUM_LIMIT_BYTES = 256 * 2**30
_CRC_BLOCK = 8 * 2**20


class DamagedShardError(ValueError):
  """A prepared shard whose size or checksum is not what prepare wrote."""


def file_crc32(path: str) -> str:
  """CRC32 of a (local or gs://) file's bytes, as 8 hex digits."""
  crc = 0
  with epath.Path(path).open("rb") as f:
    while block := f.read(_CRC_BLOCK):
      crc = zlib.crc32(block, crc)
  return f"{crc:08x}"


_CRC_DIFFERS = "its bytes changed since prepare wrote it (CRC32 differs)"


def _size_problem(path: str, size: int | None):
  """("missing" or "N bytes, prepare wrote M", None or the stat) for the
  shard at `path`, or (None, its stat) when its size is `size` (or None)."""
  try:
    stat = epath.Path(path).stat()
  except (FileNotFoundError, NotADirectoryError):
    return "missing", None
  if size is not None and stat.length != size:
    return f"{stat.length} bytes, prepare wrote {size}", stat
  return None, stat


def shard_problem(path: str, size: int | None, crc32: str | None,
                  checksum: bool = True) -> str | None:
  """Why the shard at `path` is not the one prepare recorded (missing, other
  size, other CRC32), or None when it matches; None fields are unchecked."""
  problem, _ = _size_problem(path, size)
  if (problem is None and checksum and crc32 is not None
      and file_crc32(path) != crc32):
    return _CRC_DIFFERS
  return problem


@functools.lru_cache(maxsize=4096)
def _crc_matches(path: str, version: tuple, crc32: str) -> bool:
  """`file_crc32(path) == crc32`, once per local file `version` (inode,
  size, nanosecond mtime) and process."""
  del version  # the cache key only
  return file_crc32(path) == crc32


def verify_shards(root: epath.Path, shards: list[dict]) -> None:
  """Checks the card's `shards` ({"file", "bytes", "crc32"}) under `root`;
  DamagedShardError naming the first bad one. Shards are checked in
  parallel threads; a progress line appears when it takes a while."""
  recorded = [s for s in shards if "bytes" in s]
  # Remote sets (gs://) are checked by size: every process of a pod reading
  # every byte of the set at start-up would cost more than it finds.
  checksum = ("://" not in str(root)
              and sum(s["bytes"] for s in recorded) <= CHECKSUM_LIMIT_BYTES)

  def check(shard):
    path = str(root / shard["file"])
    problem, _ = _size_problem(path, shard["bytes"])
    if problem is not None or not checksum or "crc32" not in shard:
      return path, problem
    local = os.stat(path)  # checksums are for local sets only
    version = (local.st_ino, local.st_size, local.st_mtime_ns)
    return path, (None if _crc_matches(path, version, shard["crc32"])
                  else _CRC_DIFFERS)

  start, shown = time.time(), False
  pool = concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1))
  try:
    for done, (path, problem) in enumerate(pool.map(check, recorded), 1):
      if problem is not None:
        if shown:
          print(file=sys.stderr)
        raise DamagedShardError(
            f"{path}: damaged prepared shard ({problem}); prepare the "
            f"dataset again (delete {root} and rerun the prepare command)")
      if time.time() - start > 5 and (done % 16 == 0 or done == len(recorded)):
        shown = True
        print(f"\rchecking {root}: {done}/{len(recorded)} shards",
              end="", file=sys.stderr, flush=True)
  finally:
    pool.shutdown(wait=True, cancel_futures=True)  # the rest not checked
  if shown:
    print(file=sys.stderr)


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
  Opening checks the split's shards (`verify_shards`); a record that still
  fails to read raises DamagedShardError naming its shard.
  """

  def __init__(self, name: str, split: str, card: dict | None = None):
    card = card if card is not None else read_card(name)
    root = resolve(name)
    known = card["splits"]
    paths, shards = [], []
    for part in split_names(split):
      if part not in known:
        raise ValueError(f"prepared dataset {root} has no split {part!r} "
                         f"(it has {sorted(known)}; the config names splits "
                         f"in data.train_split, eval.split, eval.fit_split)")
      shards += [shard for shard in known[part]["shards"]
                 if shard["examples"]]
    paths = [f"{root / shard['file']}[0:{shard['examples']}]"
             for shard in shards]
    if not paths:
      raise ValueError(f"split {split!r} of {root} has no examples")
    verify_shards(root, shards)
    self._paths = paths
    self._records = array_record_data_source.ArrayRecordDataSource(paths)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    try:
      return msgpack.unpackb(self._records[index], raw=False)
    except (IndexError, KeyboardInterrupt):
      raise
    except Exception as e:  # Riegeli's and msgpack's errors have no class
      raise DamagedShardError(
          f"{self._shard_of(index)}: damaged prepared shard, record {index} "
          f"does not read ({str(e).splitlines()[0] if str(e) else e!r}); "
          f"prepare the dataset again") from e

  def _shard_of(self, index: int) -> str:
    """The shard file holding record `index`."""
    for spec in self._paths:
      path, _, count = spec.rpartition("[0:")
      if index < int(count.rstrip("]")):
        return path
      index -= int(count.rstrip("]"))
    return self._paths[-1].rpartition("[0:")[0]

  def __getstate__(self):
    return {"paths": self._paths}

  def __setstate__(self, state):
    self._paths = state["paths"]
    self._records = array_record_data_source.ArrayRecordDataSource(
        self._paths)


def encode_record(key: str, image: bytes, captions: list[str],
                  label: int | None = None,
                  fields: dict[str, list[str]] | None = None) -> bytes:
  """One record of a prepared shard (see the module docstring)."""
  record = {"key": key, "image": image, "captions": list(captions)}
  if label is not None:
    record["label"] = int(label)
  if fields:
    record["fields"] = {f: list(c) for f, c in fields.items()}
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
