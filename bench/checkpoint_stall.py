r"""How long the training loop pauses when an async Orbax save starts.

  python bench/checkpoint_stall.py                     # demo config, ~1 min
  python bench/checkpoint_stall.py --preset=rn50_112   # 1.6 GB of state

Runs windows of --window train steps exactly as `train.train_and_evaluate`
does (no host sync between steps), alternately without and with a
`checkpoint.save` (state, data-iterator position, config) after the middle
step, each window ending when its last step's result is on the host. The
stall is the median extra wall time of a window with a save, in steps; the
time the save call itself blocks is shown too (the rest is the background
write sharing the CPU with the steps after it). Checkpoints go to a
temporary directory that is removed afterwards.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402

from cliplite_jax import checkpoint, config_io  # noqa: E402
from cliplite_jax.data import pipeline  # noqa: E402
import train_step  # noqa: E402


def demo_iterator(workdir: str):
  """A training-data iterator of the demo config (its position is saved)."""
  config = config_io.load_file(
      os.path.join(train_step.REPO, "configs", "default.py"))
  tokenizer = pipeline.workdir_tokenizer(config, workdir)
  return iter(pipeline.train_dataset(config, tokenizer))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", choices=sorted(train_step.PRESETS),
                      default="demo")
  parser.add_argument("--config", help="a config file[:arg] instead")
  parser.add_argument("--set", action="append", default=[],
                      metavar="KEY=VALUE")
  parser.add_argument("--window", type=int, default=6, help="steps per window")
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

    def window(save: bool) -> tuple[float, float]:
      nonlocal step_number
      blocked = 0.0
      start = time.perf_counter()
      for i in range(args.window):
        ours.state, metrics = ours.compiled(ours.state, ours.batch)
        step_number += 1
        if save and i == args.window // 2:
          t = time.perf_counter()
          checkpoint.save(mngr, step_number, ours.state, data_iter, config)
          blocked = time.perf_counter() - t
      jax.block_until_ready(metrics)
      return time.perf_counter() - start, blocked

    window(True)  # the first save sets up directories and threads
    mngr.wait_until_finished()
    plain, saving, blocked = [], [], []
    for _ in range(args.rounds):
      plain.append(window(False)[0])
      mngr.wait_until_finished()  # each save starts with none in flight
      elapsed, block = window(True)
      saving.append(elapsed)
      blocked.append(block)
      mngr.wait_until_finished()
    mngr.close()
  finally:
    shutil.rmtree(root, ignore_errors=True)
  step_s = statistics.median(plain) / args.window
  stall = statistics.median(s - p for s, p in zip(saving, plain))
  print(f"  step                {step_s * 1e3:8.1f} ms")
  print(f"  save call blocks    {statistics.median(blocked) * 1e3:8.1f} ms"
        f" = {statistics.median(blocked) / step_s:5.2f} steps")
  print(f"  window stall        {stall * 1e3:8.1f} ms = {stall / step_s:5.2f} "
        f"steps  (window of {args.window} with a save − without)")


if __name__ == "__main__":
  main()
