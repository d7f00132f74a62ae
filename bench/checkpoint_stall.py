r"""How long the training loop pauses when an async Orbax save starts.

  python bench/checkpoint_stall.py                     # demo config, ~1 min
  python bench/checkpoint_stall.py --preset=rn50_112   # 1.6 GB of state

Runs windows of --window train steps exactly as `train.train_and_evaluate`
does (no host sync between steps), in interleaved rounds: without a save;
with the loop's `checkpoint_saver.OverlappedSaver` (the packed state staged
after step 3, saved once step 4 is dispatched); with `checkpoint.save` (packed)
straight after step 3; and with a per-leaf Orbax save (the format before
packing) straight after step 3. Each window ends when its last step's
result is on the host. The stall is the median extra wall time of a window
with a save, in steps; "loop blocked" is the time the loop spent in the
save calls (for a save straight after a step it includes waiting for the
steps still queued); "write after window" is how long the write went on
after the window ended (0 when it finished inside). Then one packed and one
per-leaf save with the loop idle give the CPU time a save costs.
Checkpoints go to a temporary directory that is removed afterwards.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import grain  # noqa: E402
import jax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from cliplite_jax.data import vocabulary  # noqa: E402
from cliplite_jax import config_io  # noqa: E402
from cliplite_jax.training import (checkpoint, checkpoint_saver,  # noqa: E402
                                   guards, host_memory)
from cliplite_jax.data import pipeline  # noqa: E402
import train_step  # noqa: E402


# The training loop's way (stage after the step, save after the next one is
# dispatched) and a save straight after the step it saves.
MODES = ("overlapped", "direct", "per_leaf")
SAVE_AFTER = 3
LABELS = ("OverlappedSaver (train loop)", "checkpoint.save after the step",
          "per-leaf save after the step")


def per_leaf_save(mngr, step: int, state, data_iter, config) -> None:
  """The save before packing: one Orbax array per leaf of the state."""
  mngr.save(step, args=ocp.args.Composite(**{
      checkpoint.STATE: ocp.args.StandardSave(state),
      checkpoint.DATA_ITER: grain.checkpoint.CheckpointSave(data_iter),
      checkpoint.CONFIG: ocp.args.JsonSave(config.to_dict())}))


def cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def demo_iterator(workdir: str):
  """A training-data iterator of the demo config (its position is saved)."""
  config = config_io.load_file(
      os.path.join(train_step.REPO, "configs", "default.py"))
  tokenizer = vocabulary.workdir_tokenizer(config, workdir)
  return iter(pipeline.train_dataset(config, tokenizer))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", choices=sorted(train_step.PRESETS),
                      default="demo")
  parser.add_argument("--config", help="a config file[:arg] instead")
  parser.add_argument("--set", action="append", default=[],
                      metavar="KEY=VALUE")
  parser.add_argument("--window", type=int, default=12,
                      help=f"steps per window (a save after step {SAVE_AFTER})")
  parser.add_argument("--rounds", type=int, default=5)
  args = parser.parse_args()
  config = train_step.load_config(args)
  ours = train_step.JaxStep(config)
  size = sum(x.nbytes for x in jax.tree.leaves(ours.state))
  print(f"{args.preset}: train state {size / 2**20:.0f} MiB, "
        f"{len(jax.tree.leaves(ours.state))} arrays", flush=True)
  root = tempfile.mkdtemp(prefix="cliplite_stall_")
  try:
    data_iter = demo_iterator(root)
    mngr = checkpoint.manager(os.path.join(root, "run"), config)
    step_number = 0

    guard = guards.NonFiniteGuard()
    saver = checkpoint_saver.OverlappedSaver(mngr, config, guard, None)

    def window(mode: str | None) -> tuple[float, float, float]:
      """Wall time of one window, how long the save calls blocked, and how
      long the write went on after the window."""
      nonlocal step_number
      blocked = 0.0
      start = time.perf_counter()
      for i in range(args.window):
        ours.state, metrics = ours.compiled(ours.state, ours.batch)
        step_number += 1
        t = time.perf_counter()
        saver.flush()  # as the loop does: the staged one, while this step runs
        if mode == "direct" and i == SAVE_AFTER - 1:
          checkpoint.save(mngr, step_number, ours.state, data_iter, config)
        if mode == "per_leaf" and i == SAVE_AFTER - 1:
          per_leaf_save(mngr, step_number, ours.state, data_iter, config)
        if mode == "overlapped" and i == SAVE_AFTER - 1:
          saver.stage(step_number, ours.state, data_iter)
        blocked += time.perf_counter() - t
      jax.block_until_ready(metrics)
      elapsed = time.perf_counter() - start
      t = time.perf_counter()
      saver.wait()  # and a direct save
      return elapsed, blocked, time.perf_counter() - t

    for mode in MODES:  # the first save sets up directories and threads
      window(mode)
    wall = {mode: [] for mode in (None,) + MODES}
    blocked = {mode: [] for mode in MODES}
    after = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
      for mode in (None,) + MODES:  # each save starts with none in flight
        elapsed, block, late = window(mode)
        wall[mode].append(elapsed)
        if mode:
          blocked[mode].append(block)
          after[mode].append(late)
    # One save with the loop idle: all of its CPU, call and background write.
    jax.block_until_ready(ours.state)
    save_cpu = {"packed": [], "per_leaf": []}
    for _ in range(3):
      for kind, save in (("packed", checkpoint.save),
                         ("per_leaf", per_leaf_save)):
        step_number += 1
        start, start_cpu = time.perf_counter(), cpu_seconds()
        save(mngr, step_number, ours.state, data_iter, config)
        saver.wait()
        save_cpu[kind].append((cpu_seconds() - start_cpu,
                               time.perf_counter() - start))
    saver.close()
    mngr.close()
  finally:
    shutil.rmtree(root, ignore_errors=True)
  step_s = statistics.median(wall[None]) / args.window
  print(f"  step {step_s * 1e3:.1f} ms; windows of {args.window} steps, the "
        f"save after step {SAVE_AFTER}, {args.rounds} rounds")
  print(f"  {'':30s} {'loop blocked':>18s} {'window stall':>18s}"
        f" {'write after window':>20s}")
  for mode, label in zip(MODES, LABELS):
    block = statistics.median(blocked[mode])
    stall = statistics.median(s - p for s, p in zip(wall[mode], wall[None]))
    late = statistics.median(after[mode])
    print(f"  {label:30s} {block * 1e3:7.1f} ms {block / step_s:5.2f} st"
          f" {stall * 1e3:7.1f} ms {stall / step_s:5.2f} st"
          f" {late * 1e3:11.1f} ms")
  for kind, runs in save_cpu.items():
    print(f"  one {kind} save, loop idle: "
          f"CPU {statistics.median(c for c, _ in runs) * 1e3:.0f} ms, "
          f"wall {statistics.median(w for _, w in runs) * 1e3:.0f} ms")


if __name__ == "__main__":
  host_memory.reexec_with_fast_malloc()  # as the training command runs
  main()
