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

import atexit
import fcntl
import json
import os
import socket
import time
import weakref

import jax
import numpy as np

from cliplite_jax import config_io

LOCK_FILE = ".lock"


class WorkdirLock:
  """Holds WORKDIR/.lock from `acquire` until `release` (or process exit)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._file = None
    self._at_exit = None

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
    while True:
      # "a": never truncates a holder's record before we hold the lock.
      f = open(self.path, "a+", encoding="utf-8")
      try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError:
        break
      if self._is_current(f):
        return self._hold(f)
      f.close()  # locked a file that its releaser just removed: again
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

  def _is_current(self, f) -> bool:
    try:
      return os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino
    except FileNotFoundError:
      return False

  def _hold(self, f) -> None:
    """Keeps `f` locked and records this process in it."""
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}))
    f.flush()
    self._file = f
    # Also when an error ends the run before `release` is reached: at exit,
    # or (in-process callers) once the lock object is dropped.
    ref = weakref.ref(self)
    self._at_exit = lambda: ref() is not None and ref().release()
    atexit.register(self._at_exit)
    return None

  def release(self) -> None:
    """Releases the lock. The file stays (with the last holder's PID), unless
    the workdir holds nothing else: a run that failed before writing
    anything leaves the workdir as it found it."""
    if self._file is None:
      return
    atexit.unregister(self._at_exit)
    workdir = os.path.dirname(self.path)
    if os.listdir(workdir) == [LOCK_FILE]:
      # Removed while still locked; a run that opened it meanwhile sees
      # another inode at the path once it gets the lock, and retries.
      os.remove(self.path)
    fcntl.flock(self._file, fcntl.LOCK_UN)
    self._file.close()
    self._file = None

  def __del__(self):
    self.release()

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def acquire(workdir: str) -> WorkdirLock:
  """`WorkdirLock(workdir).acquire()`."""
  return WorkdirLock(workdir).acquire()
