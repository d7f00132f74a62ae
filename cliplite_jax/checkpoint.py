"""Orbax checkpoints under WORKDIR/checkpoints: train state, grain iterator, config."""
from __future__ import annotations

import os

import grain
import ml_collections
import orbax.checkpoint as ocp

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
      os.path.abspath(os.path.join(workdir, "checkpoints")), options=options,
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
            data_iter=None):
  """Restores `step` onto the shardings of `abstract_state`.

  `abstract_state` is a tree of jax.ShapeDtypeStruct with shardings (any
  device count). When `data_iter` is given its position is restored in place.
  Returns the train state.
  """
  args = {STATE: ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:
    args[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iter)
  return mngr.restore(step, args=ocp.args.Composite(**args))[STATE]
