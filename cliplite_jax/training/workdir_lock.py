"""One training run per workdir: an exclusive lock on WORKDIR/.lock.

The lock (`file_lock.FileLock`, an flock the kernel drops when its holder
ends) is taken by process 0 of a job; the other processes of that job share
the workdir and take nothing. On a gs:// (or other non-local) workdir no
lock is taken: object stores have no such lock, so there two runs must be
kept apart by hand.
"""
from __future__ import annotations

import os

import jax
import numpy as np

from cliplite_jax import config_io
from cliplite_jax.file_lock import FileLock

LOCK_FILE = ".lock"


class WorkdirLock:
  """Holds WORKDIR/.lock from `acquire` until `release` (or process exit)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    # A run that failed before writing anything leaves the workdir as it
    # found it; otherwise the file stays, with the last holder's PID.
    self._lock = FileLock(self.path,
                          lambda: os.listdir(workdir) == [LOCK_FILE])

  def acquire(self) -> "WorkdirLock":
    """Takes the lock, or raises UserError naming the run holding it. With
    several processes all of them raise when process 0 was refused."""
    refused = None
    if jax.process_index() == 0 and "://" not in self.path:
      who = self._lock.try_acquire()
      if who is not None:
        refused = (f"{os.path.dirname(self.path)} is in use by another "
                   f"training run ({who}); wait for it to finish, stop it, "
                   f"or use another --workdir")
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      held = multihost_utils.broadcast_one_to_all(
          np.int32(refused is not None))
      if int(held) and refused is None:
        refused = (f"{os.path.dirname(self.path)} is in use by another "
                   f"training run (see {self.path})")
    if refused is not None:
      raise config_io.UserError(refused)
    return self

  def release(self) -> None:
    """Releases the lock (the file is removed when the workdir holds nothing
    else)."""
    self._lock.release()

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def acquire(workdir: str) -> WorkdirLock:
  """`WorkdirLock(workdir).acquire()`."""
  return WorkdirLock(workdir).acquire()
