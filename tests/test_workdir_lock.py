"""One training run per workdir (subprocesses)."""
import json
import os
import signal
import socket

from cliplite_jax.training import integrity, workdir_lock
from conftest import logged_steps, quick_run_args, run_module, wait_for_step

MAIN = "cliplite_jax.main"


def test_second_run_on_a_workdir_is_refused_naming_the_holder(tiny_data_dir,
                                                               tmp_path):
  workdir = str(tmp_path / "run")
  first = run_module(MAIN, *quick_run_args(tiny_data_dir, workdir,
                                  "--config.total_steps=2000",
                                  "--config.checkpoint_every_steps=5"),
                     popen=True)
  wait_for_step(workdir, 3, first)
  config_before = open(os.path.join(workdir, "config.json")).read()
  second = run_module(MAIN, *quick_run_args(tiny_data_dir, workdir,
                                   "--config.total_steps=30",
                                   "--config.checkpoint_every_steps=1"))
  assert second.returncode == 1
  line, = second.stderr.strip().splitlines()
  assert line.startswith(f"cliplite_jax.main: error: {workdir} is in use by "
                         f"another training run (PID {first.pid} on host "
                         f"{socket.gethostname()}")
  assert first.poll() is None  # the first run goes on
  first.send_signal(signal.SIGTERM)
  stdout, stderr = first.communicate(timeout=300)
  assert first.returncode == 0, stderr[-3000:]
  saved = int(stdout.split("saved a checkpoint at step ")[1].split(";")[0])
  # Only the first run wrote: its steps once each, in order; its config and
  # checkpoints (multiples of 5, and the step it stopped at), all intact.
  assert logged_steps(workdir) == list(range(1, saved + 1))
  assert open(os.path.join(workdir, "config.json")).read() == config_before
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir,
                                                         "checkpoints")))
  assert steps[-1] == saved and all(s % 5 == 0 for s in steps[:-1])
  for step in steps:
    integrity.verify(os.path.join(workdir, "checkpoints", str(step)))
  # The lock died with its holder (its file stays, naming it): the next
  # run takes it (resuming is tested in test_reliability.py).
  with open(os.path.join(workdir, workdir_lock.LOCK_FILE)) as f:
    assert json.load(f)["pid"] == first.pid
  workdir_lock.acquire(workdir).release()


def test_lock_is_exclusive_and_released(tmp_path):
  """In-process: a second holder is refused until the first releases."""
  first = workdir_lock.acquire(str(tmp_path))
  try:
    workdir_lock.acquire(str(tmp_path))
  except Exception as e:  # pylint: disable=broad-except
    assert f"PID {os.getpid()}" in str(e)
  else:
    raise AssertionError("a second lock was granted")
  first.release()
  workdir_lock.acquire(str(tmp_path)).release()
