"""An exclusive lock held on a local file for as long as a process runs.

`fcntl.flock` on PATH: the kernel releases it when the holder ends, however
it ends (kill -9 included), so a lock left by a dead process never blocks.
The file records the holder's PID, host and start time for the refusal
message. Used for training workdirs (`workdir_lock`) and prepare's --out.
flock is advisory only on some network file systems (NFS before v4 locks
per host), and object stores (gs://) have no such lock at all.
"""
from __future__ import annotations

import atexit
import fcntl
import json
import os
import socket
import time
import weakref


class FileLock:
  """Holds PATH from `try_acquire` until `release` (or process exit)."""

  def __init__(self, path: str, remove_on_release=lambda: False):
    """path: the lock file; remove_on_release: () -> bool, asked at every
    release (exit and garbage collection included) whether to delete it."""
    self.path = path
    self._remove_on_release = remove_on_release
    self._file = None
    self._at_exit = None

  def try_acquire(self) -> str | None:
    """Takes the lock: None, or (held elsewhere) who holds it, as
    "PID p on host h, started t"."""
    while True:
      # "a": never truncates a holder's record before we hold the lock.
      f = open(self.path, "a+", encoding="utf-8")
      try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError:
        break
      if self._is_current(f):
        self._hold(f)
        return None
      f.close()  # locked a file that its releaser just removed: again
    f.seek(0)
    try:
      holder = json.loads(f.read())
      who = (f"PID {holder['pid']} on host {holder['host']}, started "
             f"{holder['started']}")
    except (ValueError, KeyError, TypeError):
      who = "a process that has not written its PID yet"
    f.close()
    return who

  @property
  def held(self) -> bool:
    """Whether this object holds the lock now."""
    return self._file is not None

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
    # Also when an error ends the holder before `release` is reached: at
    # exit, or (in-process callers) once the lock object is dropped.
    ref = weakref.ref(self)
    self._at_exit = lambda: ref() is not None and ref().release()
    atexit.register(self._at_exit)

  def release(self) -> None:
    """Releases the lock, deleting the file first when `remove_on_release()`
    says so (still locked, so a process that opened it meanwhile sees
    another inode at the path once it gets the lock, and retries)."""
    if self._file is None:
      return
    atexit.unregister(self._at_exit)
    if self._remove_on_release():
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass
    fcntl.flock(self._file, fcntl.LOCK_UN)
    self._file.close()
    self._file = None

  def __del__(self):
    self.release()
