"""Orbax checkpoints under WORKDIR/checkpoints: train state, grain iterator, config."""
from __future__ import annotations

import json
import os
import re

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

STATE, DATA_ITER, CONFIG = "state", "data_iter", "config"


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
      item_names=(STATE, DATA_ITER, CONFIG))


def save(mngr: ocp.CheckpointManager, step: int, state, data_iter,
         config: ml_collections.ConfigDict) -> None:
  """Starts an async save of `state`, the iterator position and the config."""
  mngr.save(step, args=ocp.args.Composite(**{
      STATE: ocp.args.StandardSave(state),
      DATA_ITER: grain.checkpoint.CheckpointSave(data_iter),
      CONFIG: ocp.args.JsonSave(config.to_dict()),
  }))


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state,
            data_iter=None, global_batch: int = 0):
  """Restores `step` onto the shardings of `abstract_state`.

  `abstract_state` is a tree of jax.ShapeDtypeStruct with shardings (any
  device count). When `data_iter` is given its position is restored in place,
  also from a checkpoint written by another number of processes
  (`global_batch`, the config's batch_size, is then needed).
  Returns the train state.
  """
  args = {STATE: ocp.args.StandardRestore(abstract_state)}
  translated = None
  if data_iter is not None:
    translated = _position_on_this_topology(mngr, step, global_batch)
    if translated is None:
      args[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iter)
  state = mngr.restore(step, args=ocp.args.Composite(**args))[STATE]
  if translated is not None:
    data_iter.set_state(translated)
  return state


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
