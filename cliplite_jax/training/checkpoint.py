"""Orbax checkpoints under WORKDIR/checkpoints: state, grain iterator, config.

The state is saved packed (`packing`): a few large arrays and their layout.
Each step the train loop saves gets an integrity record (`integrity`),
checked on every restore. The loop writes them with
`checkpoint_saver.OverlappedSaver`, which overlaps a save with the steps
after it.
"""
from __future__ import annotations

import json
import os
import re
import sys

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from cliplite_jax import config_io

from cliplite_jax.training import integrity, packing

STATE, LAYOUT = "state", "state_layout"
FOLDER = "checkpoints"  # in WORKDIR: one folder per saved step
DATA_ITER, CONFIG = "data_iter", "config"


class DamagedCheckpointError(config_io.UserError):
  """A checkpoint's files differ from what was written."""


def manager(workdir: str, config: ml_collections.ConfigDict,
            read_only: bool = False) -> ocp.CheckpointManager:
  """Async manager keeping the last `keep_checkpoints` steps."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.keep_checkpoints,
      keep_period=config.get("keep_every_steps") or None,
      enable_async_checkpointing=not read_only,
      # What a killed or failed save left (a step's temporary folder) goes
      # when training next starts. Local disks only: on gs:// Orbax takes
      # any step without its commit file for one, and no lock keeps a
      # second run from deleting a first one's save in progress.
      cleanup_tmp_directories=not read_only and "://" not in workdir,
      read_only=read_only,
      create=not read_only)
  return ocp.CheckpointManager(
      # Orbax wants absolute paths; gs:// ones already are.
      os.path.join(workdir if "://" in workdir else os.path.abspath(workdir),
                   FOLDER), options=options,
      item_names=(STATE, LAYOUT, DATA_ITER, CONFIG))


def save(mngr: ocp.CheckpointManager, step: int, state, data_iter,
         config: ml_collections.ConfigDict) -> None:
  """Starts an async save of `state`, the iterator position and the config.

  `data_iter` is the grain iterator (or anything with its `get_state`).
  """
  layout = packing.layout(state)
  save_packed(mngr, step, packing.pack(state, layout), layout, data_iter,
              config)


def save_packed(mngr: ocp.CheckpointManager, step: int, packed: dict,
                layout: dict, data_iter, config: ml_collections.ConfigDict
                ) -> None:
  """`save` of a state already packed (`packing.pack`) with `layout`."""
  import grain  # here: restoring a model for inference needs no pipeline
  mngr.save(step, args=ocp.args.Composite(**{
      STATE: ocp.args.StandardSave(packed),
      LAYOUT: ocp.args.JsonSave(layout),
      DATA_ITER: grain.checkpoint.CheckpointSave(data_iter),
      CONFIG: ocp.args.JsonSave(config.to_dict()),
  }))


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
      import grain  # here: restoring a model for inference needs no pipeline
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
  stream (see `streams.ProcessRows`); the global batches all processes had
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
