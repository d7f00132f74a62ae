"""Feature sets: per-example modalities precomputed by frozen encoders (as
Symile-M3 stores Whisper and CLIP features), plus raw text, read from NumPy
or Parquet files for the multi-modality model.

A feature set is a directory named `features:PATH` in `data.name`, one
split per entry:

  PATH/<split>/<m>.npy           float [N, d_m] (or [N]): modality m
  PATH/<split>/<m>.txt           N lines of UTF-8 text: a text modality
  PATH/<split>/<m>_missing.npy   optional, N values 0/1 (1: m missing)
  PATH/<split>.parquet           or the whole split in one table: a
                                 list-of-numbers column per vector modality,
                                 a string column per text modality, and
                                 optional integer/bool `<m>_missing` columns

`.npy` files are memory-mapped, so a split larger than memory trains
without loading it. Opening a split checks that every modality has the same
number of examples, that vectors are finite numbers of one width, and that
missing flags are 0 or 1, and names the first problem in one line. A missing
vector's values go in as they are (zeros, say) or with the missingness
indicator (`model.missing="indicator"`); a missing text becomes Symile's
`[MISSING]` token (`text.MISSING_TOKEN`).
"""
from __future__ import annotations

import os

import numpy as np

PREFIX = "features:"
_MISSING = "_missing"


class FeatureSetError(ValueError):
  """A feature set that cannot be read as described in the module doc."""


def is_name(name: str) -> bool:
  """Whether a `data.name` names a feature set ("features:PATH")."""
  return name.startswith(PREFIX)


def location(name: str) -> str:
  """The directory of a feature set's name, absolute."""
  return os.path.abspath(os.path.expanduser(name[len(PREFIX):]))


def splits(name: str) -> list[str]:
  """The splits a feature set has (sub-directories and `.parquet` files)."""
  root = location(name)
  if not os.path.isdir(root):
    raise FeatureSetError(f"feature set {root} is not a directory")
  found = {entry.removesuffix(".parquet") for entry in os.listdir(root)
           if not entry.startswith((".", "_"))
           and (entry.endswith(".parquet")
                or os.path.isdir(os.path.join(root, entry)))}
  return sorted(found)


def modalities(name: str) -> tuple[str, ...]:
  """The modalities of a feature set's first split, by its files' names or
  its table's columns (read without loading any values); () when it has no
  split."""
  found = splits(name)
  if not found:
    return ()
  root = location(name)
  folder = os.path.join(root, found[0])
  if os.path.isdir(folder):
    stems = [os.path.splitext(e)[0] for e in os.listdir(folder)
             if e.endswith((".npy", ".txt"))]
  else:
    import pyarrow.parquet as pq
    try:
      stems = pq.read_schema(folder + ".parquet").names
    except OSError:
      return ()
  return tuple(sorted(s for s in stems
                      if not (s.endswith(_MISSING)
                              and s.removesuffix(_MISSING) in stems)))


def _check_flags(column: str, flags: np.ndarray, where: str) -> np.ndarray:
  flags = np.asarray(flags).reshape(len(flags), -1)
  if flags.shape[1] != 1 or not np.isin(flags, (0, 1)).all():
    raise FeatureSetError(f"{where}: {column} must hold one 0 or 1 per "
                          f"example")
  return flags.reshape(-1).astype(np.uint8)


def _check_vectors(column: str, values: np.ndarray, where: str) -> np.ndarray:
  if values.dtype.kind not in "fiub" or not 1 <= values.ndim <= 2:
    raise FeatureSetError(f"{where}: {column} must be numbers [N, d] or [N] "
                          f"(got {values.dtype} {list(values.shape)})")
  values = values.reshape(len(values), -1)
  # Checked in blocks, so a memory-mapped file is read once, not loaded; as
  # float32, the values the towers get.
  for start in range(0, len(values), 65536):
    with np.errstate(over="ignore", invalid="ignore"):
      block = values[start:start + 65536].astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
    if bad.size:
      raise FeatureSetError(f"{where}: {column} of example {start + bad[0]} "
                            f"is NaN, infinite or beyond float32's range")
  return values


def _read_folder(folder: str) -> dict[str, np.ndarray | list[str]]:
  columns = {}
  for entry in sorted(os.listdir(folder)):
    path, (stem, ext) = os.path.join(folder, entry), os.path.splitext(entry)
    if ext not in (".npy", ".txt") or entry.startswith("."):
      continue
    if stem in columns:
      raise FeatureSetError(f"{folder} holds both {stem}.npy and {stem}.txt: "
                            f"keep the one modality {stem} is")
    if ext == ".npy":
      try:
        columns[stem] = np.load(path, mmap_mode="r", allow_pickle=False)
      except ValueError as e:
        raise FeatureSetError(f"{path} is not a readable .npy file of "
                              f"numbers ({e})") from e
      continue
    try:
      with open(path, encoding="utf-8-sig", newline="") as f:
        # One text per line: \n or \r\n ends it; a \r alone is text.
        columns[stem] = [line.removesuffix("\r")
                         for line in f.read().split("\n")]
    except UnicodeDecodeError as e:
      raise FeatureSetError(f"{path} is not UTF-8 (byte {e.start}: "
                            f"{e.reason})") from e
    if columns[stem] and columns[stem][-1] == "":  # the final newline
      columns[stem].pop()
  return columns


def _read_parquet(path: str) -> dict[str, np.ndarray | list[str]]:
  import pyarrow as pa  # tfds's dependency; only for Parquet sets
  import pyarrow.parquet as pq
  try:
    table = pq.read_table(path)
  except (pa.ArrowException, OSError) as e:
    raise FeatureSetError(f"{path} is not a readable Parquet file "
                          f"({e})") from e
  columns = {}
  for field in table.schema:
    if field.name.startswith("__"):  # pandas' index, not a modality
      continue
    column, kind = table.column(field.name), field.type
    if pa.types.is_dictionary(kind):  # pandas' Categorical
      column, kind = column.cast(kind.value_type), kind.value_type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
      # A null text is empty; flag a missing one with <m>_missing.
      columns[field.name] = [s if s is not None else ""
                             for s in column.to_pylist()]
    elif (pa.types.is_list(kind) or pa.types.is_large_list(kind)
          or pa.types.is_fixed_size_list(kind)):
      rows = column.to_pylist()
      widths = {len(r) for r in rows if r is not None}
      if len(widths) > 1 or any(r is None for r in rows):
        raise FeatureSetError(f"{path}: column {field.name} must hold one "
                              f"list of the same length per row")
      try:
        columns[field.name] = np.asarray(rows, np.float64)
      except (TypeError, ValueError) as e:
        raise FeatureSetError(f"{path}: column {field.name} must hold lists "
                              f"of numbers ({e})") from e
    elif (pa.types.is_integer(kind) or pa.types.is_floating(kind)
          or pa.types.is_boolean(kind)):
      columns[field.name] = column.to_numpy(zero_copy_only=False)
    else:
      raise FeatureSetError(f"{path}: column {field.name} is {kind}; a "
                            f"modality is a string column (text) or a list "
                            f"of numbers, a flag a number or a bool")
  return columns


class FeatureSplit:
  """One split of a feature set, indexable like a TFDS data source:
  example i → {m: float32 [d_m] (vectors) or str (text), "<m>_missing":
  uint8 [] where the split has flags}.

  Attributes:
    vectors: {m: d_m}, the vector modalities and their widths.
    texts: the text modalities' names.
  """

  def __init__(self, name: str, split: str):
    root = location(name)
    folder, table = os.path.join(root, split), os.path.join(
        root, split + ".parquet")
    where = f"feature set {root}, split {split!r}"
    if os.path.isdir(folder):
      columns = _read_folder(folder)
    elif os.path.isfile(table):
      columns = _read_parquet(table)
    else:
      raise FeatureSetError(f"{where}: neither {folder}/ nor {table} exists "
                            f"(splits: {splits(name) or 'none'})")
    if not columns:
      raise FeatureSetError(f"{where} holds no .npy or .txt files")
    for key, values in columns.items():
      if not isinstance(values, list) and values.ndim == 0:
        raise FeatureSetError(f"{where}: {key} is a single number, not one "
                              f"value per example")
    sizes = {k: len(v) for k, v in columns.items()}
    if len(set(sizes.values())) > 1:
      raise FeatureSetError(f"{where}: the modalities differ in their number "
                            f"of examples: {sizes} (a text file holds one "
                            f"text per line, an empty line for an empty "
                            f"text)")
    self._size = next(iter(sizes.values()))
    if not self._size:
      raise FeatureSetError(f"{where} has no examples")
    self._columns, self.vectors, self.texts = {}, {}, []
    for key, values in columns.items():
      if key.endswith(_MISSING) and key.removesuffix(_MISSING) in columns:
        self._columns[key] = _check_flags(key, values, where)
      elif isinstance(values, list):
        self._columns[key] = values
        self.texts.append(key)
      else:
        self._columns[key] = _check_vectors(key, values, where)
        self.vectors[key] = self._columns[key].shape[1]

  def __len__(self) -> int:
    return self._size

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not -self._size <= index < self._size:
      raise IndexError(f"example {index} of {self._size}")
    return {k: (v[index] if isinstance(v, list)
                else np.asarray(v[index], np.float32 if k in self.vectors
                                else np.uint8))
            for k, v in self._columns.items()}

  def __getitems__(self, indices) -> list[dict]:
    return [self[i] for i in indices]
