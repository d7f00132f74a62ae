"""One training run per workdir: an exclusive lock on WORKDIR/.lock.

The lock is `fcntl.flock` on a local file, taken by process 0 of a job (the
other processes of that job share the workdir and take nothing). The kernel
releases it when the process ends, however it ends, so a lock left by a
dead process never blocks; the file keeps the holder's PID and host for the
refusal message. On a gs:// (or other non-local) workdir no lock is taken:
object stores have no such lock, so there two runs must be kept apart by
hand. flock is also advisory only on some network file systems (NFS before
v4 locks per host).
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time

import jax
import numpy as np

from cliplite_jax import config_io

LOCK_FILE = ".lock"


class WorkdirLock:
  """Holds WORKDIR/.lock from `acquire` until `release` (or process exit)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._file = None

  def acquire(self) -> "WorkdirLock":
    """Takes the lock, or raises UserError naming the run holding it. With
    several processes all of them raise when process 0 was refused."""
    refused = None
    if jax.process_index() == 0 and "://" not in self.path:
      refused = self._try_lock()
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

  def _try_lock(self) -> str | None:
    # "a": never truncates a holder's record before we hold the lock.
    f = open(self.path, "a+", encoding="utf-8")
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.seek(0)
      try:
        holder = json.loads(f.read())
        who = (f"PID {holder['pid']} on host {holder['host']}, started "
               f"{holder['started']}")
      except (ValueError, KeyError, TypeError):
        who = "a process that has not written its PID yet"
      f.close()
      workdir = os.path.dirname(self.path)
      return (f"{workdir} is in use by another training run ({who}); wait "
              f"for it to finish, stop it, or use another --workdir")
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}))
    f.flush()
    self._file = f
    return None

  def release(self) -> None:
    """Releases the lock (the file stays: removing it would race with a run
    that opened it and waits to lock it)."""
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def acquire(workdir: str) -> WorkdirLock:
  """`WorkdirLock(workdir).acquire()`."""
  return WorkdirLock(workdir).acquire()
