r"""Trains CLIP-Lite; resumes when WORKDIR already has checkpoints.

  python -m cliplite_jax.main --config=configs/default.py --workdir=/tmp/demo \
      [--config.total_steps=300 ...]

`--config=path.py:arg` selects a variant through the file's `get_config(arg)`.
"""
from __future__ import annotations

import os
import re
import sys

if __name__ == "__main__":
  # First, before the heavy imports: this may replace the process once.
  from cliplite_jax import host_memory
  host_memory.reexec_with_fast_malloc()

from absl import app, flags, logging
from ml_collections import config_flags

from cliplite_jax import config_io, train
from cliplite_jax.data import sources

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and "
                    "evaluation results; an existing one is resumed.")
flags.DEFINE_bool("distributed", False, "Multi-process run: call "
                  "jax.distributed.initialize() first, which finds the "
                  "coordinator, process count and id on TPU VM slices and "
                  "under SLURM, or from the three flags below.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 "
                    "(implies --distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes "
                     "(with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index "
                     "(with --coordinator_address).")
flags.DEFINE_bool("allow_config_change", False, "Resume a workdir even though "
                  "the model, loss or tokenisation config differs from the "
                  "one saved there.")


def _fail(message: str):
  sys.exit(f"cliplite_jax.main: error: {message}")


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with one-line errors for bad flags and config overrides."""
  for arg in argv:
    if arg.startswith("--config="):
      path = arg.partition("=")[2].partition(":")[0]
      if not os.path.isfile(path):
        _fail(f"config file {path} not found (configs live in configs/, "
              f"e.g. --config=configs/default.py)")
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _fail(str(e).splitlines()[0])
  except (AttributeError, KeyError) as e:
    # ml_collections raises these for an override of a key the config lacks.
    message = str(e)
    key = re.search(r"'(\w+)", message)
    key = key.group(1) if key else message
    overrides = [a for a in argv if a.startswith("--config.") and key in a]
    where = f" in {overrides[0].partition('=')[0]}" if overrides else ""
    suggestion = re.search(r'Did you mean "(\w+)"', message)
    hint = (f"; did you mean {suggestion.group(1)!r}?" if suggestion else
            "; overrides must name fields that the config file defines")
    _fail(f"unknown config key {key!r}{where}{hint}")


def initialize_distributed(coordinator_address: str | None,
                           num_processes: int | None,
                           process_id: int | None) -> None:
  """jax.distributed.initialize, explicit or auto-detected (all None).

  CPU processes exchange their collectives over gloo (the default CPU
  backend has none across processes); GPUs and TPUs ignore that setting.
  """
  import jax  # here, so that --help stays fast
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit) and None in explicit:
    _fail("--coordinator_address, --num_processes and --process_id go "
          "together")
  if num_processes is not None and not 0 <= process_id < num_processes:
    _fail(f"--process_id={process_id} must be in [0, {num_processes})")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  except (RuntimeError, ValueError) as e:
    _fail(f"jax.distributed.initialize failed: {str(e).splitlines()[0]}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR)  # Keep the progress lines readable.
  if FLAGS.distributed or FLAGS.coordinator_address:
    initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                           FLAGS.process_id)
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir,
                             FLAGS.allow_config_change)
  except (config_io.UserError, sources.DatasetNotPreparedError) as e:
    sys.exit(f"cliplite_jax.main: error: {e}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, flags_parser=parse_flags)
