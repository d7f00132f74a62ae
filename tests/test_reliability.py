"""Killed, preempted, diverging and misconfigured runs, as subprocesses."""
import json
import os
import random
import shutil
import signal

import jax
import numpy as np
import pytest

from cliplite_jax.training import (checkpoint, optim, parallel,
                                   state as state_lib)

from cliplite_jax import config_io
from cliplite_jax.models import cliplite
from conftest import eight_step_args, run_module, wait_for_step

MAIN = "cliplite_jax.main"


def _args(data_dir, workdir, *extra):
  return eight_step_args(data_dir, workdir, *extra)


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


# Wall-clock measurements: the only metrics two runs may differ in.
TIMING = ("img_per_s", "img_per_s_per_device", "data/wait_frac", "core_hours")


def _losses(workdir):
  return [(r["step"], {k: v for k, v in r.items() if k not in TIMING})
          for r in _records(workdir)]


def _final_params(workdir):
  config = config_io.load_saved(workdir)
  model, tx = cliplite.build(config), optim.build(config)
  mngr = checkpoint.manager(workdir, config, read_only=True)
  state = checkpoint.restore(mngr, mngr.latest_step(), state_lib.abstract_state(
      config, model, tx, parallel.make_mesh(1)))
  # Typed PRNG keys compare through their raw bits.
  state = jax.tree.map(lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(
      x.dtype, jax.dtypes.prng_key) else x, state)
  return mngr.latest_step(), jax.device_get(state)


@pytest.fixture
def reference(eight_step_run):
  """An uninterrupted 8-step run (conftest's, shared)."""
  return eight_step_run


def test_sigkill_at_a_random_step_then_rerun_is_bit_exact(
    reference, tiny_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  # A random step, from a printed seed: KILL_SEED=<seed> repeats a failure.
  seed = int(os.environ.get("KILL_SEED", random.SystemRandom().randrange(1 << 30)))
  kill_at = random.Random(seed).randint(2, 7)
  print(f"KILL_SEED={seed}: killing at step {kill_at}")
  process = run_module(MAIN, *_args(tiny_data_dir, workdir), popen=True)
  wait_for_step(workdir, kill_at, process)
  process.send_signal(signal.SIGKILL)
  process.wait()
  result = run_module(MAIN, *_args(tiny_data_dir, workdir))
  assert result.returncode == 0, result.stderr[-3000:]
  assert _losses(workdir) == _losses(reference), (
      f"killed at {kill_at} (KILL_SEED={seed})")
  # Device-hours carry over the resume: they only grow.
  hours = [r["core_hours"] for r in _records(workdir) if "core_hours" in r]
  assert len(hours) == 8 and all(0 < a < b for a, b in zip(hours, hours[1:]))
  step, state = _final_params(workdir)
  ref_step, ref_state = _final_params(reference)
  assert step == ref_step == 8
  jax.tree.map(np.testing.assert_array_equal, state, ref_state)


def test_half_written_checkpoint_is_ignored(reference, tiny_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  for step in ("6", "8"):
    shutil.rmtree(os.path.join(ckpts, step))
  # What a kill during the save of step 6 leaves: an unfinalised temp folder.
  partial = os.path.join(ckpts, "6.orbax-checkpoint-tmp-1700000000")
  shutil.copytree(os.path.join(ckpts, "4"), partial)
  shutil.rmtree(os.path.join(partial, "state"))
  result = run_module(MAIN, *_args(tiny_data_dir, workdir))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resuming from step 4" in result.stdout
  assert not os.path.exists(partial)  # removed when the run started
  jax.tree.map(np.testing.assert_array_equal, _final_params(workdir)[1],
               _final_params(reference)[1])


def test_sigterm_saves_the_current_step_and_exits_0(tiny_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  # The long run of test_interrupts.py and test_workdir_lock.py (one
  # compilation for the session).
  process = run_module(MAIN, *_args(tiny_data_dir, workdir,
                                    "--config.total_steps=2000",
                                    "--config.checkpoint_every_steps=1000"),
                       popen=True)
  wait_for_step(workdir, 3, process)
  process.send_signal(signal.SIGTERM)
  stdout, stderr = process.communicate(timeout=300)
  assert process.returncode == 0, stderr[-3000:]
  saved = int(stdout.split("saved a checkpoint at step ")[1].split(";")[0])
  assert 3 <= saved < 1000
  assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(saved)]
  assert max(r["step"] for r in _records(workdir)) == saved


def test_nonfinite_loss_stops_with_the_step_and_keeps_good_checkpoints(
    tiny_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  huge = [f"--config.optim.lr.{g}=1e30" for g in ("image", "text", "other")]
  result = run_module(MAIN, *_args(tiny_data_dir, workdir, *huge,
                                   "--config.checkpoint_every_steps=1"))
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "is not finite at step" in lines[0], result.stderr
  bad_step = int(lines[0].split("at step ")[1].split(";")[0])
  saved = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")))
  assert saved and max(saved) < bad_step
  assert f"the last good checkpoint, step {max(saved)}, is kept" in lines[0]
  assert all(np.isfinite(v) for r in _records(workdir) for v in r.values())
  step, _ = _final_params(workdir)  # the kept checkpoint restores
  assert step == max(saved)


@pytest.mark.parametrize("overrides,needle", [
    (["--config.batch_size=15"], "multiple of devices × accum_steps = 2 × 1"),
    (["--config.eval.split=nosuch"], "nosuch"),
    (["--config.optim.warmup_steps=8"], "warmup_steps"),
    (["--config.data.tokenizer=/nonexistent/vocab"], "data.tokenizer"),
    (["--config.eval.probes=('svm',)", "--config.eval.transfer=('voc/2007',)"],
     "tfds build voc/2007 --file_format=array_record"),
    (["--config.eval.transfer=('nosuch',)"], "unknown dataset 'nosuch'"),
    (["--config.eval.probes=('retreival',)"], "eval.probes: unknown"),
])
def test_bad_config_is_one_line_and_writes_nothing(tiny_data_dir, tmp_path,
                                                   overrides, needle):
  workdir = str(tmp_path / "run")
  result = run_module(MAIN, *_args(tiny_data_dir, workdir,
                                   "--config.eval.probes=('retrieval',)",
                                   *overrides))
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and needle in lines[0], result.stderr[-2000:]
  assert not os.path.exists(workdir) or not os.listdir(workdir)


def test_changed_config_refuses_to_resume_unless_allowed(reference,
                                                         tiny_data_dir,
                                                         tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  before = {name: os.path.getmtime(os.path.join(workdir, name))
            for name in ("config.json", "metrics.jsonl")}
  changed = _args(tiny_data_dir, workdir, "--config.total_steps=10",
                  "--config.loss.prior_weight=0.2")
  result = run_module(MAIN, *changed)
  assert result.returncode == 1
  line, = result.stderr.strip().splitlines()
  assert "loss.prior_weight (0.1 -> 0.2)" in line and "--allow_config_change" in line
  assert {n: os.path.getmtime(os.path.join(workdir, n)) for n in before} == before
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "6", "8"]
  # Training longer is not a change of what was trained.
  result = run_module(MAIN, *changed, "--allow_config_change")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resuming from step 8" in result.stdout
  assert config_io.load_saved(workdir).loss.prior_weight == 0.2
