"""Damaged checkpoints: detected on restore, training falls back, evaluate
refuses; a step pruned while evaluate reads it."""
import os
import random
import shutil
import types

import jax
import numpy as np
import pytest

from cliplite_jax import config_io
from cliplite_jax.training import (checkpoint, checkpoint_saver, guards,
                                   integrity, optim, parallel, recovery,
                                   state as state_lib)
from cliplite_jax.models import cliplite
from conftest import eight_step_args, run_module

MAIN, EVALUATE = "cliplite_jax.main", "cliplite_jax.evaluate"


def _args(data_dir, workdir, *extra):
  return eight_step_args(data_dir, workdir, *extra)


def _params(workdir, step):
  config = config_io.load_saved(workdir)
  model, tx = cliplite.build(config), optim.build(config)
  mngr = checkpoint.manager(workdir, config, read_only=True)
  state = checkpoint.restore(mngr, step, state_lib.abstract_state(
      config, model, tx, parallel.make_mesh(1)))
  return jax.device_get(jax.tree.map(
      lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(
          x.dtype, jax.dtypes.prng_key) else x, state))


@pytest.fixture
def reference(eight_step_run):
  """An uninterrupted 8-step run (conftest's, shared): checkpoints 4, 6 and
  8, each recorded."""
  for step in (4, 6, 8):
    step_dir = os.path.join(eight_step_run, "checkpoints", str(step))
    assert integrity.has_record(step_dir)
    integrity.verify(step_dir)
  return eight_step_run


def _array_files(step_dir):
  """The files holding the state's array bytes (Orbax's `d/` folders)."""
  return sorted(os.path.relpath(os.path.join(root, name), step_dir)
                for root, _, names in os.walk(os.path.join(step_dir, "state"))
                if os.path.basename(root) == "d" for name in names)


def _damage(step_dir, how):
  """Damages a random array file of `step_dir` (seeded, reported)."""
  seed = random.randrange(2**32)
  rng = random.Random(seed)
  name = rng.choice(_array_files(step_dir))
  path = os.path.join(step_dir, name)
  size = os.path.getsize(path)
  offset = rng.randrange(size)
  print(f"damage={how} seed={seed} file={name} offset={offset} size={size}")
  if how == "flip":
    with open(path, "r+b") as f:
      f.seek(offset)
      byte = f.read(1)[0]
      f.seek(offset)
      f.write(bytes([byte ^ rng.randrange(1, 256)]))
  elif how == "truncate":
    os.truncate(path, offset)
  else:
    os.remove(path)
  return name


# CI runs the flipped byte; a truncated or deleted file takes the same path
# (a record that no longer matches) and runs with -m slow.
@pytest.mark.parametrize("how,evaluate_args", [
    ("flip", []),
    pytest.param("truncate", ["--step=8"], marks=pytest.mark.slow),
    pytest.param("delete", [], marks=pytest.mark.slow)])
def test_damaged_latest_checkpoint(reference, tiny_data_dir, tmp_path, how,
                                   evaluate_args):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  name = _damage(os.path.join(workdir, "checkpoints", "8"), how)

  result = run_module(EVALUATE, f"--workdir={workdir}", *evaluate_args)
  assert result.returncode == 1, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr[-3000:]
  line = lines[0]
  assert line.startswith("cliplite_jax.evaluate: error: checkpoint step 8 ")
  assert "is damaged" in line and name in line and "--step" in line
  assert not os.path.exists(os.path.join(workdir, "eval", "step_8.json"))

  # Training resumes from step 6 and redoes steps 7 and 8, bit for bit.
  result = run_module(MAIN, *_args(tiny_data_dir, workdir))
  assert result.returncode == 0, result.stderr[-3000:]
  warning, = result.stderr.strip().splitlines()
  assert warning.startswith("warning: checkpoint step 8 ") and name in warning
  assert "resuming from step 6" in result.stdout
  assert os.listdir(os.path.join(workdir, "damaged_checkpoints")) == ["8"]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [
      "4", "6", "8"]
  integrity.verify(os.path.join(workdir, "checkpoints", "8"))
  jax.tree.map(np.testing.assert_array_equal, _params(workdir, 8),
               _params(reference, 8))


def test_every_checkpoint_damaged_is_refused_and_nothing_moved(
    reference, tiny_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  for step in (4, 6, 8):
    _damage(os.path.join(workdir, "checkpoints", str(step)), "flip")
  result = run_module(MAIN, *_args(tiny_data_dir, workdir))
  assert result.returncode == 1
  *warnings, line = result.stderr.strip().splitlines()
  assert len(warnings) == 3
  assert line.startswith("cliplite_jax.main: error: every checkpoint in ")
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [
      "4", "6", "8"]
  assert not os.path.exists(os.path.join(workdir, "damaged_checkpoints"))


@pytest.mark.slow  # CI time; its damaged-record siblings stay in CI
def test_checkpoint_without_a_record_resumes_unverified(reference,
                                                        tiny_data_dir,
                                                        tmp_path):
  """As if the run had died between Orbax's finalisation and the record."""
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  os.remove(os.path.join(workdir, "checkpoints", "8", integrity.MANIFEST))
  result = run_module(MAIN, *_args(tiny_data_dir, workdir,
                                   "--config.total_steps=10"))
  assert result.returncode == 0, result.stderr[-3000:]
  warning, = result.stderr.strip().splitlines()
  assert "step 8 has no integrity record" in warning
  assert "resuming from step 8" in result.stdout


def test_nonfinite_message_does_not_call_an_unverified_restore_good(tmp_path):
  step_dir = tmp_path / "checkpoints" / "7"
  step_dir.mkdir(parents=True)
  mngr = types.SimpleNamespace(directory=str(tmp_path / "checkpoints"))
  guard = guards.NonFiniteGuard()
  saver = checkpoint_saver.OverlappedSaver(mngr, None, guard, 7)
  saver._writer.shutdown()  # pylint: disable=protected-access
  guard.update(8, {"loss/total": np.float32(np.nan),
                   "grad_norm": np.float32(1.0)})
  with pytest.raises(guards.NonFiniteError) as error:
    guard.check(7)
  assert "good" not in str(error.value)
  assert "step 7, is kept; it was restored without an integrity record" in str(
      error.value)
  integrity.write(str(step_dir))
  guard = guards.NonFiniteGuard()
  checkpoint_saver.OverlappedSaver(mngr, None, guard, 7)._writer.shutdown()
  guard.update(8, {"loss/total": np.float32(np.nan),
                   "grad_norm": np.float32(1.0)})
  with pytest.raises(guards.NonFiniteError,
                     match="the last good checkpoint, step 7, is kept"):
    guard.check(7)


def test_step_pruned_while_evaluate_reads_it(reference, tmp_path):
  """A training run deletes the oldest step between evaluate listing the
  steps and reading one: the newest is read instead, or, for an explicit
  --step, one line says what happened."""
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  config = config_io.load_saved(workdir)
  model, tx = cliplite.build(config), optim.build(config)
  abstract = state_lib.abstract_state(config, model, tx, parallel.make_mesh(1))
  mngr = checkpoint.manager(workdir, config, read_only=True)
  assert mngr.all_steps() == [4, 6, 8]
  shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
  with pytest.raises(config_io.UserError,
                     match="step 4 .* was deleted while it was read"):
    recovery.restore_reading(mngr, 4, abstract, follow_latest=False)
  step, state = recovery.restore_reading(mngr, 4, abstract,
                                         follow_latest=True)
  assert step == 8 and int(state.step) == 8


def test_unrecorded_unreadable_step_is_refused_in_one_line(reference,
                                                           tmp_path):
  """Without a record, damage shows only when Orbax reads the files: evaluate
  then names the step instead of raising TensorStore's traceback."""
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  step_dir = os.path.join(workdir, "checkpoints", "8")
  os.remove(os.path.join(step_dir, integrity.MANIFEST))
  # The largest file holds the arrays' bytes (small ones may be b-tree
  # nodes of earlier versions, which a read does not need).
  largest = max(_array_files(step_dir),
                key=lambda n: os.path.getsize(os.path.join(step_dir, n)))
  os.truncate(os.path.join(step_dir, largest), 1000)
  config = config_io.load_saved(workdir)
  model, tx = cliplite.build(config), optim.build(config)
  abstract = state_lib.abstract_state(config, model, tx, parallel.make_mesh(1))
  mngr = checkpoint.manager(workdir, config, read_only=True)
  with pytest.raises(checkpoint.DamagedCheckpointError,
                     match=r"step 8 .* cannot be read: .*--step=N"):
    recovery.restore_reading(mngr, 8, abstract, follow_latest=True)
