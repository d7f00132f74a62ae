"""Runs stopped by a failed save or by Ctrl-C (subprocesses)."""
import os
import re
import resource
import signal

from cliplite_jax.training import integrity
from conftest import logged_steps, quick_run_args, run_module, wait_until

MAIN = "cliplite_jax.main"


def test_failed_save_stops_the_run_and_keeps_the_last_checkpoint(
    tiny_data_dir, tmp_path):
  """A write that fails as on a full disk: once step 4 is saved, the run's
  file size limit drops to 1 MB (root ignores permissions, not this), so
  the next checkpoint's array file cannot be written. That is step 8's,
  unless a loaded machine let step 8's save through before the limit."""
  workdir = str(tmp_path / "run")
  args = quick_run_args(tiny_data_dir, workdir, "--config.total_steps=2000",
               "--config.checkpoint_every_steps=4")
  process = run_module(MAIN, *args, popen=True)
  recorded = os.path.join(workdir, "checkpoints", "4", integrity.MANIFEST)
  wait_until(lambda: os.path.exists(recorded), process,
             "step 4's integrity record", timeout=300, poll_s=0.01)
  resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (10**6, 10**6))
  stdout, stderr = process.communicate(timeout=300)
  assert process.returncode == 1
  # The error is the last line and nothing before it is a traceback (a
  # library's own warning about the same full disk may precede it).
  line = stderr.strip().splitlines()[-1]
  assert "Traceback" not in stderr, stderr[-3000:]
  failed = re.match(r"cliplite_jax\.main: error: saving the checkpoint of "
                    r"step (\d+) to ", line)
  assert failed, stderr[-3000:]
  failed = int(failed.group(1))
  kept = failed - 4
  assert failed % 4 == 0 and kept >= 4
  assert "File too large" in line and "GiB free" in line
  assert f"the last complete checkpoint, step {kept}, is kept" in line
  # Stopped within a few steps (the background write's time), long
  # before the end.
  assert max(logged_steps(workdir)) < 100, stdout[-2000:]
  # No temporary folder left; the last step saved intact and resumable.
  saved = os.listdir(os.path.join(workdir, "checkpoints"))
  assert str(kept) in saved and all(s.isdigit() and int(s) < failed
                                    for s in saved), saved
  integrity.verify(os.path.join(workdir, "checkpoints", str(kept)))
  # Resumed to step 8 where it can (then the same programs as conftest's
  # eight_step_run, compiled once a session), else 2 steps further.
  result = run_module(MAIN, *quick_run_args(
      tiny_data_dir, workdir, f"--config.total_steps={max(8, kept + 2)}",
      "--config.checkpoint_every_steps=4"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"resuming from step {kept}" in result.stdout


def _interrupted_run(data_dir, workdir):
  process = run_module(MAIN, *quick_run_args(data_dir, workdir,
                                    "--config.total_steps=2000",
                                    "--config.checkpoint_every_steps=1000"),
                       popen=True)
  for line in process.stdout:
    if line.startswith("step 3/"):
      break
  process.send_signal(signal.SIGINT)
  return process


def test_ctrl_c_saves_the_current_step_and_exits(tiny_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  process = _interrupted_run(tiny_data_dir, workdir)
  stdout, stderr = process.communicate(timeout=300)
  assert process.returncode == 0, stderr[-3000:]
  assert stderr.strip() == ""  # no KeyboardInterrupt traceback
  assert "Ctrl-C again exits at once" in stdout
  saved = int(stdout.split("saved a checkpoint at step ")[1].split(";")[0])
  assert 3 <= saved < 1000
  assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(saved)]
  integrity.verify(os.path.join(workdir, "checkpoints", str(saved)))
  assert max(logged_steps(workdir)) == saved


def test_second_ctrl_c_exits_at_once(tiny_data_dir, tmp_path):
  # The second Ctrl-C must land while the first one's save is still being
  # written; on a loaded machine this test may be too slow for that, and
  # then the run has (correctly) saved before it came: try again.
  for attempt in range(3):
    workdir = str(tmp_path / f"run{attempt}")
    process = _interrupted_run(tiny_data_dir, workdir)
    for line in process.stdout:
      if line.startswith("interrupted:"):
        break
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    if "saved a checkpoint" not in stdout:
      break
  assert process.returncode == 130, stderr[-3000:]
  line, = stderr.strip().splitlines()
  assert line.startswith("interrupted again: exiting without saving")
  assert "preempted" not in stdout
