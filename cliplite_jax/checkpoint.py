"""Orbax checkpoints under WORKDIR/checkpoints: train state, grain iterator, config.

The state is saved packed (`packing`): a few large arrays and their layout.
Each step the train loop saves gets an integrity record (`integrity`),
checked on every restore.
"""
from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import re
import shutil
import sys
import threading

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from cliplite_jax import config_io, integrity, packing

STATE, LAYOUT = "state", "state_layout"
DATA_ITER, CONFIG = "data_iter", "config"


class DamagedCheckpointError(config_io.UserError):
  """A checkpoint's files differ from what was written."""


class SaveError(config_io.UserError):
  """Writing a checkpoint failed (disk full, unwritable, ...)."""


def manager(workdir: str, config: ml_collections.ConfigDict,
            read_only: bool = False) -> ocp.CheckpointManager:
  """Async manager keeping the last `keep_checkpoints` steps."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.keep_checkpoints,
      keep_period=config.get("keep_every_steps") or None,
      enable_async_checkpointing=not read_only,
      read_only=read_only,
      create=not read_only)
  return ocp.CheckpointManager(
      # Orbax wants absolute paths; gs:// ones already are.
      os.path.join(workdir if "://" in workdir else os.path.abspath(workdir),
                   "checkpoints"), options=options,
      item_names=(STATE, LAYOUT, DATA_ITER, CONFIG))


def save(mngr: ocp.CheckpointManager, step: int, state, data_iter,
         config: ml_collections.ConfigDict) -> None:
  """Starts an async save of `state`, the iterator position and the config.

  `data_iter` is the grain iterator (or anything with its `get_state`).
  """
  layout = packing.layout(state)
  _save_packed(mngr, step, packing.pack(state, layout), layout, data_iter,
               config)


def _save_packed(mngr, step, packed, layout, data_iter, config) -> None:
  mngr.save(step, args=ocp.args.Composite(**{
      STATE: ocp.args.StandardSave(packed),
      LAYOUT: ocp.args.JsonSave(layout),
      DATA_ITER: grain.checkpoint.CheckpointSave(data_iter),
      CONFIG: ocp.args.JsonSave(config.to_dict()),
  }))


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
  step's temporary folder; earlier checkpoints stay as they are.
  """

  NICENESS = 10

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
    self._broken = False  # set on the writer thread by a failed save
    _quiet_orbax_save_errors()
    self._writer = concurrent.futures.ThreadPoolExecutor(
        1, "checkpoint", initializer=self._lower_priority)
    self.last_saved = last_saved
    if (last_saved is not None and hasattr(guard, "unverified_step")
        and not integrity.has_record(step_dir(mngr, last_saved))):
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

  def _save(self, step, packed, layout, position) -> None:
    if self._broken:
      return  # after a failed save nothing more is written
    try:
      _save_packed(self._mngr, step, packed, layout, position, self._config)
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e

  def _finalise(self, step: int, save_call) -> None:
    """On the writer thread, after `save_call` (its `_save`): waits for
    Orbax to finalise `step`, then records its files' checksums."""
    if self._broken or save_call.exception() is not None:
      return  # that save never started; its error is raised already
    try:
      self._mngr.wait_until_finished()
      if jax.process_index() == 0:
        integrity.write(step_dir(self._mngr, step))
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e

  def _save_error(self, step: int, error: Exception) -> SaveError:
    self._broken = True
    directory = epath.Path(self._mngr.directory)
    if jax.process_index() == 0:
      # Only this save's temporary folder: finished steps stay untouched.
      for tmp in directory.glob(f"{step}.orbax-checkpoint-tmp*"):
        shutil.rmtree(tmp, ignore_errors=True)
    earlier = [s for s in self._mngr.all_steps() if s != step]
    kept = (f"the last complete checkpoint, step {max(earlier)}, is kept"
            if earlier else "no earlier checkpoint exists")
    return SaveError(
        f"saving the checkpoint of step {step} to {directory} failed: "
        f"{one_line(error)} ({_free_space(directory)}); {kept}. Free space or "
        f"fix the folder, then run the same command to resume")

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


def _quiet_orbax_save_errors() -> None:
  absl_logger = logging.getLogger("absl")
  if not any(isinstance(f, _DropOrbaxSaveErrors) for f in absl_logger.filters):
    absl_logger.addFilter(_DropOrbaxSaveErrors())


def step_dir(mngr: ocp.CheckpointManager, step: int) -> str:
  """The folder of `step` under the manager's directory."""
  return str(epath.Path(mngr.directory) / str(step))


def one_line(error: BaseException) -> str:
  """One line of an error: TensorStore's messages nest every layer's
  context; the OS's reason comes last."""
  while error.__cause__ is not None:  # Orbax wraps TensorStore's error
    error = error.__cause__
  text = (str(error).strip().splitlines() or [type(error).__name__])[0]
  if len(text) > 200 and ": " in text:
    text = "...: " + ": ".join(text.split(": ")[-2:])
  return text


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


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state,
            data_iter=None, global_batch: int = 0, verify: bool = True):
  """Restores `step` onto the shardings of `abstract_state`.

  `abstract_state` is a tree of jax.ShapeDtypeStruct with shardings (any
  device count). When `data_iter` is given its position is restored in place,
  also from a checkpoint written by another number of processes
  (`global_batch`, the config's batch_size, is then needed).
  With `verify`, the step's files are first checked against its integrity
  record (reading the checkpoint once more; see `integrity`):
  DamagedCheckpointError if they differ. A step without a record is
  restored unverified, with a warning on stderr.
  Returns the train state.
  """
  if verify:
    check_integrity(mngr, step)
  layout = None
  if (epath.Path(mngr.directory) / str(step) / LAYOUT).exists():
    layout = mngr.restore(step, args=ocp.args.Composite(**{
        LAYOUT: ocp.args.JsonRestore()}))[LAYOUT]
    packing.check_matches(layout, abstract_state,
                          f"the checkpoint at step {step}")
    args = {STATE: ocp.args.StandardRestore(
        packing.abstract_packed(layout, abstract_state))}
  else:  # saved before packing: one array per leaf
    args = {STATE: ocp.args.StandardRestore(abstract_state)}
  translated = None
  if data_iter is not None:
    translated = _position_on_this_topology(mngr, step, global_batch)
    if translated is None:
      args[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iter)
  state = mngr.restore(step, args=ocp.args.Composite(**args))[STATE]
  if layout is not None:
    state = packing.unpack(state, layout, abstract_state)
  if translated is not None:
    data_iter.set_state(translated)
  return state


def check_integrity(mngr: ocp.CheckpointManager, step: int) -> None:
  """Checks `step` against its integrity record: DamagedCheckpointError
  naming the first differing file; a warning if it has no record."""
  directory = step_dir(mngr, step)
  if not integrity.has_record(directory):
    if epath.Path(directory).exists():
      warn(f"checkpoint step {step} has no integrity record (saved by an "
            f"older version, or its run stopped before recording it); "
            f"restoring it unverified")
    return
  try:
    integrity.verify(directory)
  except integrity.DamagedError as e:
    raise DamagedCheckpointError(
        f"checkpoint step {step} in {mngr.directory} is damaged: {e}") from e


def warn(message: str) -> None:
  """A one-line warning on stderr (process 0)."""
  if jax.process_index() == 0:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _position_on_this_topology(mngr: ocp.CheckpointManager, step: int,
                               global_batch: int) -> dict | None:
  """The iterator state for this process when the checkpoint was written by
  a different number of processes (None when it was not).

  Each process's saved `next_index` counts its own rows of the global
  stream (see `pipeline.ProcessRows`); the global batches all processes had
  started is the largest next_index / rows-per-process, rounded up, and the
  new processes start at that global batch. Exact unless examples were
  skipped in the last batch; never repeats one.
  """
  directory = epath.Path(mngr.directory) / str(step) / DATA_ITER
  count = jax.process_count()
  if (directory / f"process_{jax.process_index()}-of-{count}.json").exists():
    return None
  files = [f.name for f in directory.iterdir()
           if re.fullmatch(r"process_\d+-of-\d+\.json", f.name)]
  if not files:
    return None  # let grain report the missing state
  saved_count = int(re.search(r"of-(\d+)", files[0]).group(1))
  states = []
  for name in files:
    states.append(json.loads((directory / name).read_text()))
  if any(set(s) != {"next_index"} for s in states):
    raise ValueError(
        f"the checkpoint at step {step} was written by {saved_count} "
        f"processes with data.num_workers > 0; resume it on {saved_count} "
        f"processes, or on any number with data.num_workers=0")
  old_rows, new_rows = global_batch // saved_count, global_batch // count
  batches = max(-(-s["next_index"] // old_rows) for s in states)
  print(f"resuming a {saved_count}-process checkpoint on {count} processes: "
        f"the data stream continues at global batch {batches}", flush=True)
  return {"next_index": batches * new_rows}
