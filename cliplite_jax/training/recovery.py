"""Which checkpoint to restore when some are damaged or being deleted.

Training resumes from the newest intact step (`restore_intact`), setting
damaged ones aside; evaluation, which may run next to a training run that
prunes old steps, follows the newest step (`restore_reading`).
"""
from __future__ import annotations

import jax
import orbax.checkpoint as ocp
from etils import epath

from cliplite_jax import config_io

from cliplite_jax.training import integrity
from cliplite_jax.training.checkpoint import (DamagedCheckpointError, restore,
                                     one_line, step_dir, warn)

DAMAGED_DIR = "damaged_checkpoints"  # in WORKDIR, next to checkpoints/


def restore_intact(mngr: ocp.CheckpointManager, abstract_state,
                   data_iter=None, global_batch: int = 0):
  """Restores the newest intact step for training to resume from.

  Steps are tried newest first. A damaged one (its files differ from its
  integrity record; or, lacking a record, Orbax cannot read it) is named in
  a one-line warning and, once an intact step is found, moved to
  WORKDIR/damaged_checkpoints/ (kept for inspection; training will write
  those step numbers again). Raises DamagedCheckpointError, moving nothing,
  if every step is damaged. Returns (step, state), or (None, None) when
  there is no checkpoint.
  """
  damaged = []
  for step in reversed(mngr.all_steps()):
    try:
      state = restore(mngr, step, abstract_state, data_iter, global_batch)
    except DamagedCheckpointError as e:
      reason = str(e)
    except config_io.UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      if integrity.has_record(step_dir(mngr, step)):
        raise  # its files are as written: not damage
      reason = (f"checkpoint step {step} in {mngr.directory} cannot be "
                f"read: {one_line(e)}")
    else:
      _set_aside(mngr, damaged)
      return step, state
    warn(f"{reason}; trying the previous checkpoint (the damaged one is "
          f"moved to {epath.Path(mngr.directory).parent / DAMAGED_DIR})")
    damaged.append(step)
  if damaged:
    raise DamagedCheckpointError(
        f"every checkpoint in {mngr.directory} is damaged (steps "
        f"{sorted(damaged)}); move that folder away to train from scratch")
  return None, None


def _set_aside(mngr: ocp.CheckpointManager, steps: list[int]) -> None:
  if not steps:
    return
  aside = epath.Path(mngr.directory).parent / DAMAGED_DIR
  if jax.process_index() == 0:
    aside.mkdir(parents=True, exist_ok=True)
    for step in steps:
      target, n = aside / str(step), 1
      while target.exists():
        target, n = aside / f"{step}.{n}", n + 1
      epath.Path(step_dir(mngr, step)).rename(target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("cliplite_jax:damaged_set_aside")
  mngr.reload()


def restore_reading(mngr: ocp.CheckpointManager, step: int, abstract_state,
                    follow_latest: bool, attempts: int = 3):
  """`restore` for a reader running next to training, which may delete
  (prune) the step while it is read. Then, with `follow_latest`, the newest
  step is restored instead (up to `attempts` tries); otherwise UserError
  names the step. A damaged step (or one without an integrity record that
  Orbax cannot read) is refused: DamagedCheckpointError naming the other
  steps. Returns (step, state)."""
  for _ in range(attempts):
    try:
      return step, restore(mngr, step, abstract_state)
    except DamagedCheckpointError as e:
      if epath.Path(step_dir(mngr, step)).exists():
        raise DamagedCheckpointError(
            f"{e}; evaluate another step with --step=N (steps: "
            f"{list(mngr.all_steps())})") from e
    except config_io.UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      if integrity.has_record(step_dir(mngr, step)):
        raise  # its files are as written: not damage
      if epath.Path(step_dir(mngr, step)).exists():
        raise DamagedCheckpointError(
            f"checkpoint step {step} in {mngr.directory} cannot be read: "
            f"{one_line(e)}; evaluate another step with --step=N (steps: "
            f"{list(mngr.all_steps())})") from e
    if not follow_latest:
      raise config_io.UserError(
          f"checkpoint step {step} in {mngr.directory} was deleted while it "
          f"was read (the training run on this workdir keeps only its last "
          f"checkpoints); evaluate a newer step")
    mngr.reload()
    if not mngr.all_steps():
      break
    step = mngr.latest_step()
  raise config_io.UserError(
      f"the checkpoints in {mngr.directory} were deleted faster than they "
      f"could be read; try again or stop the training run first")
