"""An integrity record of each checkpoint: every file's size and CRC-32.

Orbax writes a step into a temporary folder and renames it when complete,
which protects against a write that stops half way, but not against what
happens to the files afterwards (a flipped bit, a truncated or deleted
file). Once a step's folder is final, `write` stores the size and CRC-32
of every file in it as `MANIFEST` inside that folder (so Orbax's pruning
removes both together); `verify` checks them before a restore.

Cost: both read the whole checkpoint once. zlib's CRC-32 runs at about
1-2 GB/s per core and files are hashed in parallel, so on a local disk
whose page cache still holds the files it is about a second per GB; on a
cold disk or a bucket it is the time to read the checkpoint once more.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import zlib

from etils import epath

MANIFEST = "integrity.json"
_CHUNK = 16 << 20


class DamagedError(Exception):
  """A checkpoint's files do not match its integrity record."""


def _crc32(path: epath.Path) -> tuple[int, int]:
  size, crc = 0, 0
  with path.open("rb") as f:
    while chunk := f.read(_CHUNK):
      size += len(chunk)
      crc = zlib.crc32(chunk, crc)  # releases the GIL on large buffers
  return size, crc


def _files(step_dir: epath.Path) -> list[str]:
  out = []
  for root, _, names in step_dir.walk():
    for name in names:
      path = epath.Path(root) / name
      if name not in (MANIFEST, MANIFEST + ".tmp"):
        out.append(str(path.relative_to(step_dir)))
  return sorted(out)


def _hash_all(step_dir: epath.Path, names: list[str]) -> dict:
  workers = max(1, min(8, os.cpu_count() or 1, len(names)))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    return dict(zip(names, pool.map(lambda n: _crc32(step_dir / n), names)))


def write(step_dir: str) -> None:
  """Records the size and CRC-32 of every file under `step_dir`.

  Call once the step is final (after Orbax's finalisation). The record is
  written to a temporary name and renamed, so it is complete or absent.
  """
  step_dir = epath.Path(step_dir)
  hashed = _hash_all(step_dir, _files(step_dir))
  record = {"algorithm": "crc32",
            "files": {n: {"size": s, "crc32": c} for n, (s, c) in hashed.items()}}
  tmp = step_dir / (MANIFEST + ".tmp")
  tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
  tmp.replace(step_dir / MANIFEST)


def has_record(step_dir: str) -> bool:
  """Whether `step_dir` has an integrity record (checkpoints written by
  older versions, or whose run stopped between Orbax's finalisation and
  the record, have none)."""
  return (epath.Path(step_dir) / MANIFEST).exists()


def verify(step_dir: str) -> None:
  """Raises DamagedError naming the first file that is missing, has another
  size or another CRC-32 than recorded, or if the record is unreadable.
  A step without a record passes (see `has_record`)."""
  step_dir = epath.Path(step_dir)
  path = step_dir / MANIFEST
  if not path.exists():
    return
  try:
    files = json.loads(path.read_text())["files"]
    expected = {n: (int(e["size"]), int(e["crc32"])) for n, e in files.items()}
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise DamagedError(f"its integrity record {MANIFEST} is unreadable "
                       f"({type(e).__name__})") from e
  names = sorted(expected)
  for name in names:
    if not (step_dir / name).is_file():
      raise DamagedError(f"{name} is missing")
    size = (step_dir / name).stat().length
    if size != expected[name][0]:
      raise DamagedError(f"{name} has {size} bytes, {expected[name][0]} were "
                         f"written")
  for name, got in _hash_all(step_dir, names).items():
    if got != expected[name]:
      raise DamagedError(f"{name} has another checksum than was written "
                         f"(crc32 {got[1]:08x}, expected "
                         f"{expected[name][1]:08x})")
