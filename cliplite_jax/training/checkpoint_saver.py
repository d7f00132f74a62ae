"""Checkpoint writes that overlap the train steps, and their failures.

`OverlappedSaver` saves step N's checkpoint (`checkpoint.save_packed`) on a
writer thread while the steps after it run. A save that fails (disk full,
unwritable folder) becomes one SaveError line naming the step, the reason
and the free space; the libraries' own tracebacks for it are silenced.
"""
from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import shutil
import sys
import threading
import time

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from cliplite_jax.training import checkpoint, integrity, packing

from cliplite_jax import config_io


class SaveError(config_io.UserError):
  """Writing a checkpoint failed (disk full, unwritable, ...)."""


class _Position:
  """A data iterator's position, frozen when its checkpoint was staged.

  Stands in for the iterator in `grain.checkpoint.CheckpointSave`, which
  writes `get_state()` bytes as they are.
  """

  def __init__(self, data_iter):
    state = data_iter.get_state()
    self._state = (state if isinstance(state, bytes)
                   else json.dumps(state, indent=4).encode())

  def get_state(self) -> bytes:
    return self._state


class OverlappedSaver:
  """Writes step N's checkpoint while the steps after it run.

  Orbax's `save` first waits for the state it saves (so for the steps
  still queued), then copies it to the host and does its bookkeeping, and
  its async write then competes for the CPU. Here `stage` keeps the packed
  state (a copy on the device: one extra state's memory until the save, and
  the next step may donate the original), the iterator position and
  `guard`'s non-finite record, without waiting for the step.
  `flush`, called once the next step is dispatched, checks the record and
  hands the save to a writer thread at low CPU priority (Linux); Orbax's
  own write threads, started from it, inherit that priority. With several
  processes `flush` waits for Orbax's `save` to return, so its cross-process
  barrier keeps its place among the steps' collectives.

  The writer thread then waits for Orbax to finalise the step and (process
  0) writes its integrity record. A save that fails is raised as SaveError
  by the next `flush` (called every step), `wait` or `close`: one line
  naming the step, the error and the free space, after removing the
  step's temporary folder; earlier checkpoints stay as they are. Writes
  that were still running when the save failed can recreate that folder,
  so `close` removes it again until it stays gone for SETTLE_S seconds.
  """

  NICENESS = 10
  SETTLE_S, SETTLE_LIMIT_S = 0.5, 30.0

  def __init__(self, mngr: ocp.CheckpointManager,
               config: ml_collections.ConfigDict, guard,
               last_saved: int | None):
    """`guard` has `record()` and `check(last_saved, record)`
    (guards.NonFiniteGuard); `last_saved` is the latest step on disk."""
    self._mngr, self._config, self._guard = mngr, config, guard
    self._staged = None
    self._pending = None
    self._finalising = []
    self._failed = None
    self._failed_step = None  # set on the writer thread by a failed save
    _quiet_orbax_save_errors()
    self._writer = concurrent.futures.ThreadPoolExecutor(
        1, "checkpoint", initializer=self._lower_priority)
    self.last_saved = last_saved
    if (last_saved is not None and hasattr(guard, "unverified_step")
        and not integrity.has_record(checkpoint.step_dir(mngr, last_saved))):
      guard.unverified_step = last_saved

  def stage(self, step: int, state, data_iter) -> None:
    """Takes step `step`'s checkpoint; an earlier staged one is saved first."""
    self.flush()
    layout = packing.layout(state)
    self._staged = (step, packing.pack(state, layout), layout,
                    _Position(data_iter), self._guard.record())

  def flush(self) -> None:
    """Starts saving the staged checkpoint, if any. Raises
    guards.NonFiniteError, saving nothing, if a step up to the staged one had
    a non-finite loss or gradient norm; raises SaveError if an earlier save
    failed."""
    if self._pending is not None and self._pending.done():
      self._wait_for_save_call()  # raises its error, if any
    self._raise_failed_saves(block=False)
    if self._staged is None:
      return
    step, packed, layout, position, record = self._staged
    self._staged = None
    self._guard.check(self.last_saved, record)
    self._wait_for_save_call()
    self._pending = self._writer.submit(self._save, step, packed, layout,
                                        position)
    self._finalising.append(self._writer.submit(self._finalise, step,
                                                self._pending))
    if jax.process_count() > 1:
      self._wait_for_save_call()
    self.last_saved = step

  def wait(self) -> None:
    """Returns when every flushed checkpoint is on disk with its integrity
    record (a staged one is not flushed); raises SaveError if one failed."""
    self._wait_for_save_call()
    self._raise_failed_saves(block=True)
    self._mngr.wait_until_finished()

  def close(self) -> None:
    """`wait`, then stops the writer thread. After a failed save it raises
    nothing more and leaves Orbax's manager safe to close."""
    try:
      if self._failed is None:
        self.wait()
    finally:
      self._writer.shutdown()
      if self._failed is not None:
        try:
          # Orbax re-raises a failed finalisation once per calling thread;
          # taking it here keeps `mngr.close()` from raising it again.
          self._mngr.wait_until_finished()
        except Exception:  # pylint: disable=broad-except
          pass
        self._remove_partial_save(self._failed_step, self.SETTLE_S)

  def _save(self, step, packed, layout, position) -> None:
    if self._failed_step is not None:
      return  # after a failed save nothing more is written
    try:
      checkpoint.save_packed(self._mngr, step, packed, layout, position,
                             self._config)
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e

  def _finalise(self, step: int, save_call) -> None:
    """On the writer thread, after `save_call` (its `_save`): waits for
    Orbax to finalise `step`, then records its files' checksums."""
    if self._failed_step is not None or save_call.exception() is not None:
      return  # that save never started; its error is raised already
    try:
      self._mngr.wait_until_finished()
      if jax.process_index() == 0:
        integrity.write(checkpoint.step_dir(self._mngr, step))
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e

  def _save_error(self, step: int, error: Exception) -> SaveError:
    self._failed_step = step
    directory = epath.Path(self._mngr.directory)
    self._remove_partial_save(step, settle_s=0.0)
    earlier = [s for s in self._mngr.all_steps() if s != step]
    kept = (f"the last complete checkpoint, step {max(earlier)}, is kept"
            if earlier else "no earlier checkpoint exists")
    return SaveError(
        f"saving the checkpoint of step {step} to {directory} failed: "
        f"{checkpoint.one_line(error)} ({_free_space(directory)}); {kept}. "
        f"Free space or fix the folder, then run the same command to resume")

  def _remove_partial_save(self, step: int | None, settle_s: float) -> None:
    """Process 0 removes `step`'s temporary folders (only those: finished
    steps stay untouched), again whenever one reappears, until none has
    for `settle_s` seconds or SETTLE_LIMIT_S have passed. Best effort: it
    gives up on a folder that survives 10 removals in a row (read-only or
    unreachable); a write landing mid-removal only makes one fail."""
    if step is None or jax.process_index() != 0:
      return
    directory = epath.Path(self._mngr.directory)
    start = quiet_since = time.monotonic()
    stuck = 0
    try:
      while True:
        leftovers = list(directory.glob(f"{step}.orbax-checkpoint-tmp*"))
        for tmp in leftovers:
          try:
            tmp.rmtree(missing_ok=True)
          except Exception:  # pylint: disable=broad-except
            pass  # counted below
        stuck = stuck + 1 if any(t.exists() for t in leftovers) else 0
        now = time.monotonic()
        if leftovers:
          quiet_since = now
        if (stuck >= 10 or now - quiet_since >= settle_s
            or now - start >= self.SETTLE_LIMIT_S):
          return
        time.sleep(0.05)
    except Exception:  # pylint: disable=broad-except
      return  # listing the folder failed (unreachable): leave it

  def _raise_failed_saves(self, block: bool) -> None:
    if self._failed is not None:
      return
    still = []
    for done in self._finalising:
      if not block and not done.done():
        still.append(done)
        continue
      error = done.exception()
      if error is not None:
        self._failed = error
        self._finalising = []
        raise error
    self._finalising = still

  def _wait_for_save_call(self) -> None:
    pending, self._pending = self._pending, None
    if pending is not None:
      error = pending.exception()
      if error is not None and self._failed is None:
        self._failed = error
        raise error

  @classmethod
  def _lower_priority(cls) -> None:
    if sys.platform == "linux":
      try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                       cls.NICENESS)
      except OSError:
        pass  # best effort: the save still runs, at normal priority


class _DropOrbaxSaveErrors(logging.Filter):
  """Orbax logs a failed background save with its traceback, at each layer
  that sees it; OverlappedSaver raises it as one SaveError line instead."""

  FILES = ("async_checkpointer.py", "checkpoint_manager.py", "future.py")

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno == logging.ERROR and "orbax" in record.pathname
                and os.path.basename(record.pathname) in self.FILES)


class _DropLateWriteCallbacks:
  """An unraisable-exception hook that drops one message and passes on the
  rest. When one of a save's concurrent TensorStore writes fails, Orbax
  stops and closes that save's event loop; each write still running then
  completes into the closed loop, and Python prints an "Event loop is
  closed" traceback for it. The failure itself is raised as SaveError."""

  def __init__(self, previous):
    self.previous = previous

  def __call__(self, unraisable) -> None:
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
      self.previous(unraisable)


def _quiet_orbax_save_errors() -> None:
  absl_logger = logging.getLogger("absl")
  if not any(isinstance(f, _DropOrbaxSaveErrors) for f in absl_logger.filters):
    absl_logger.addFilter(_DropOrbaxSaveErrors())
  if not isinstance(sys.unraisablehook, _DropLateWriteCallbacks):
    sys.unraisablehook = _DropLateWriteCallbacks(sys.unraisablehook)


def _free_space(directory: epath.Path) -> str:
  path = str(directory)
  if "://" in path:
    return "free space unknown on this file system"
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  try:
    free = shutil.disk_usage(path).free
  except OSError:
    return "free space unknown"
  return f"{free / 2**30:.2f} GiB free on its file system"
