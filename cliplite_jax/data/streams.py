"""The index-keyed streams the training pipeline is made of: a split's
examples (a `data.fraction` subset), reshuffled per epoch into an infinite
stream, and a process's rows of each global batch. Element k of each is a
fixed function of k, which is what makes a run resume exactly and see the
same global batches on any number of processes."""
from __future__ import annotations

import sys

import grain
import numpy as np


class EpochShuffle(grain.MapDataset):
  """Infinite stream of full batches' worth of elements, reshuffled per epoch.

  Element i is parent[perm_e[i mod n]] with e = i // n, n = the largest
  multiple of `batch_size` ≤ len(parent) and perm_e a permutation seeded by
  (seed, e).
  """

  def __init__(self, parent: grain.MapDataset, seed: int, batch_size: int):
    super().__init__(parent)
    self._epoch_size = len(parent) // batch_size * batch_size
    if self._epoch_size == 0:
      raise ValueError(f"dataset of {len(parent)} examples is smaller than "
                       f"one batch of {batch_size}")
    self._seed = seed
    self._cached = (-1, None)

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return f"EpochShuffle(seed={self._seed})"

  def _permutation(self, epoch: int) -> np.ndarray:
    if self._cached[0] != epoch:
      rng = np.random.default_rng([self._seed, epoch])
      self._cached = (epoch, rng.permutation(len(self._parent)))
    return self._cached[1]

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, position = divmod(index, self._epoch_size)
    return self._parent[int(self._permutation(epoch)[position])]


class ProcessRows(grain.MapDataset):
  """This process's rows of each global batch of an infinite `parent` stream.

  Element j is parent[g·B + p·b + r] with (g, r) = divmod(j, b), B the global
  batch, b = B / process count and p the process index: the processes' rows
  of global batch g are consecutive, as the devices' are within a process,
  so a run sees the same global batches on any number of processes.
  """

  def __init__(self, parent: grain.MapDataset, global_batch: int,
               process_index: int, process_count: int):
    super().__init__(parent)
    self._global_batch = global_batch
    self._local_batch = global_batch // process_count
    self._offset = process_index * self._local_batch

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return f"ProcessRows(offset={self._offset}, rows={self._local_batch})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    batch, row = divmod(index, self._local_batch)
    return self._parent[batch * self._global_batch + self._offset + row]


class IndexedExamples:
  """A random-access view of `examples[indices]` yielding (index, example)."""

  def __init__(self, examples, indices: np.ndarray):
    self._examples, self._indices = examples, indices

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, i):
    index = int(self._indices[i])
    return index, self._examples[index]


def subset_indices(num_examples: int, fraction: float, seed: int) -> np.ndarray:
  """The seeded, sorted subset of round(fraction · N) example indices (int64).

  Subsets of one seed are nested: the 10 % subset lies inside the 25 % one.
  """
  if not 0 < fraction <= 1:
    raise ValueError(f"data.fraction must be in (0, 1], got {fraction}")
  if fraction == 1:
    return np.arange(num_examples)
  count = max(1, round(fraction * num_examples))
  order = np.random.default_rng([seed, num_examples]).permutation(num_examples)
  return np.sort(order[:count])
