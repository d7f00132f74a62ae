"""Runs that change shape: several processes, and checkpoints restored on
fewer devices (subprocesses, as a user runs them)."""
import json
import os
import re
import shutil
import signal
import subprocess

import pytest

from conftest import (REPO, TEST_XLA_FLAGS, logged_steps, run_module,
                      tiny_overrides, wait_for_step)


def _args(data_dir, workdir, steps, *extra):
  return ["--config=configs/default.py", f"--workdir={workdir}",
          *tiny_overrides(data_dir), f"--config.total_steps={steps}",
          "--config.log_every_steps=1", "--config.checkpoint_every_steps=2",
          *extra]


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return {r["step"]: r["loss/total"] for r in records if "loss/total" in r}


def _launch(processes, data_dir, workdir, steps):
  """launch/local_multiprocess.sh: `processes` × 2 fake CPU devices."""
  env = dict(os.environ, DEVICES_PER_PROCESS="2")
  env["XLA_FLAGS"] = TEST_XLA_FLAGS  # the script adds the device count
  result = subprocess.run(
      ["bash", "launch/local_multiprocess.sh", str(processes),
       *_args(data_dir, workdir, steps, "--config.eval.probes=()")],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  logs = "".join(open(os.path.join(workdir, f)).read()[-2000:]
                 for f in sorted(os.listdir(workdir)) if f.endswith(".log"))
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr + logs


def _single(data_dir, workdir, steps):
  """One process with 4 fake CPU devices."""
  result = run_module("cliplite_jax.main",
                      *_args(data_dir, workdir, steps,
                             "--config.eval.probes=()"), devices=4)
  assert result.returncode == 0, result.stderr[-3000:]


def test_two_processes_train_like_one_stop_together_and_resume_on_one(
    tiny_data_dir, tmp_path):
  """The multi-process essentials in three launches: 2 processes × 2
  devices see the global batches of 1 process × 4 (each process its own
  rows) and draw the same cluster negatives; SIGTERM stops both at one step
  with a checkpoint and exit 0; that checkpoint resumes on 1 process."""
  # Long enough never to finish, no checkpoint before the signal's; with
  # cluster hard negatives from step 2 (centroids refreshed every step):
  # each device draws its negatives with its own key, on either topology.
  long_run = ["--config.checkpoint_every_steps=100000",
              "--config.loss.negatives=clusters", "--config.loss.clusters.k=2",
              "--config.loss.clusters.start_step=2",
              "--config.loss.clusters.every_steps=1"]
  single = str(tmp_path / "single")
  process = run_module("cliplite_jax.main",
                       *_args(tiny_data_dir, single, 100000,
                              "--config.eval.probes=()", *long_run),
                       devices=4, popen=True)
  wait_for_step(single, 3, process)
  process.send_signal(signal.SIGTERM)
  assert process.wait(timeout=300) == 0, process.communicate()[1][-3000:]

  multi = str(tmp_path / "multi")
  env = dict(os.environ, DEVICES_PER_PROCESS="2")
  env["XLA_FLAGS"] = TEST_XLA_FLAGS  # the script adds the device count
  launcher = subprocess.Popen(
      ["bash", "launch/local_multiprocess.sh", "2",
       *_args(tiny_data_dir, multi, 100000, "--config.eval.probes=()",
              *long_run)],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)
  wait_for_step(multi, 3, launcher)
  launcher.send_signal(signal.SIGTERM)
  out = launcher.communicate(timeout=300)[0]
  assert launcher.returncode == 0, out[-3000:]
  saved = re.search(r"preempted: saved a checkpoint at step (\d+)", out)
  assert saved, out[-3000:]
  stopped_at = int(saved.group(1))
  assert os.listdir(os.path.join(multi, "checkpoints")) == [str(stopped_at)]
  log = open(os.path.join(multi, "process_1.log")).read()
  assert f"saved a checkpoint at step {stopped_at}" in log  # the same step

  # Steps 1–3 run under the same learning rates in both (warmup 1 step);
  # only the all-reduce order differs (see the slow test below).
  multi_losses, single_losses = _losses(multi), _losses(single)
  for step in (1, 2, 3):
    assert multi_losses[step] == pytest.approx(single_losses[step],
                                               rel=1e-4), step

  # Resumed with the first run's arguments (its compiled programs, from the
  # session's cache), stopped again once it has trained 2 more steps.
  process = run_module("cliplite_jax.main",
                       *_args(tiny_data_dir, multi, 100000,
                              "--config.eval.probes=()", *long_run),
                       devices=4, popen=True)
  wait_for_step(multi, stopped_at + 2, process)
  process.send_signal(signal.SIGTERM)
  stdout, stderr = process.communicate(timeout=300)
  assert process.returncode == 0, stderr[-3000:]
  assert "resuming a 2-process checkpoint on 1 processes" in stdout
  # Each step logged once, in order: the resumed run went on from the
  # checkpoint, not from the start.
  steps = logged_steps(multi)
  assert steps == list(range(1, len(steps) + 1)), steps
  assert steps[-1] >= stopped_at + 2


@pytest.mark.slow  # ~4 minutes on 2 cores: six launches, each compiling
def test_two_processes_match_one_and_resume_each_others_checkpoints(
    tiny_data_dir, tmp_path):
  """2 processes × 2 devices and 1 process × 4 devices: same global batch,
  same seed, same losses; a checkpoint continues the same on either."""
  multi, single = str(tmp_path / "multi"), str(tmp_path / "single")
  _launch(2, tiny_data_dir, multi, steps=4)
  _single(tiny_data_dir, single, steps=4)
  multi_losses, single_losses = _losses(multi), _losses(single)
  assert sorted(multi_losses) == [1, 2, 3, 4]
  # Step 1 sees the same weights: only the all-reduce order differs.
  assert multi_losses[1] == pytest.approx(single_losses[1], rel=1e-6)
  # Later steps start from weights that differ in the last bits, and this
  # tiny run (lr 0.2, gradients clipped at 10) grows such differences about
  # tenfold a step: one process with other XLA kernels moves step 4 by ~5e-6
  # and step 6 by 3e-3. A wrong batch moves the loss by ~1e-1.
  for step in multi_losses:
    assert multi_losses[step] == pytest.approx(single_losses[step], rel=1e-4)

  # So the resume check starts both topologies from one checkpoint: each
  # step-4 checkpoint continues on 1 process and on 2, with the same batches.
  for name in ("multi", "single"):
    on_one, on_two = (str(tmp_path / f"{name}_then_{n}") for n in (1, 2))
    shutil.copytree(str(tmp_path / name), on_one)
    shutil.copytree(str(tmp_path / name), on_two)
    _single(tiny_data_dir, on_one, steps=6)
    _launch(2, tiny_data_dir, on_two, steps=6)
    a, b = _losses(on_one), _losses(on_two)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    assert a[5] == pytest.approx(b[5], rel=1e-6), name
    assert a[6] == pytest.approx(b[6], rel=1e-5), name


@pytest.mark.slow
def test_a_4_device_checkpoint_evaluates_and_trains_on_1(tiny_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  result = run_module("cliplite_jax.main",
                      *_args(tiny_data_dir, workdir, 4,
                             "--config.eval.probes=('retrieval','gap')"),
                      devices=4)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, "eval", "step_4.json")) as f:
    on_four = json.load(f)
  # Evaluated on 1 device: every array's 4 shards gathered onto one.
  result = run_module("cliplite_jax.evaluate", f"--workdir={workdir}",
                      devices=1)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, "eval", "step_4.json")) as f:
    restored = json.load(f)
  assert restored.keys() == on_four.keys()
  for key, value in on_four.items():
    assert restored[key] == pytest.approx(value, abs=1e-5), key

  # ... and trains on there: 2 more steps on 1 device.
  resumed = str(tmp_path / "resumed")
  shutil.copytree(workdir, resumed)
  result = run_module("cliplite_jax.main",
                      *_args(tiny_data_dir, resumed, 6,
                             "--config.eval.probes=()"), devices=1)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resuming from step 4" in result.stdout
  assert sorted(_losses(resumed)) == [1, 2, 3, 4, 5, 6]
