r"""Trains CLIP-Lite; resumes when WORKDIR already has checkpoints.

  python -m cliplite_jax.main --config=configs/default.py --workdir=/tmp/demo \
      [--config.total_steps=300 ...]

`--config=path.py:arg` selects a variant through the file's `get_config(arg)`.
"""
from __future__ import annotations

import os
import sys

_INTERRUPTED = ("cliplite_jax.main: error: interrupted; the checkpoints saved "
                "so far are kept, the same command resumes\n")


def _exit_interrupted(signum=None, frame=None):
  """Ctrl-C outside the train loop (which saves on it): one line, status
  130. os._exit, because unwinding while XLA's and grain's threads run can
  crash the interpreter's shutdown."""
  del signum, frame
  sys.stdout.flush()
  sys.stderr.write(_INTERRUPTED)
  sys.stderr.flush()
  os._exit(130)


if __name__ == "__main__":
  import signal
  # From the first import on; the train loop installs its own handler and
  # restores this one. An ignored SIGINT (a script's background job) stays so.
  if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
    signal.signal(signal.SIGINT, _exit_interrupted)
  from cliplite_jax.training import native_logs
  native_logs.quiet()
  # First, before the heavy imports: this may replace the process once.
  from cliplite_jax.training import host_memory
  host_memory.reexec_with_fast_malloc()

from absl import app, flags
from ml_collections import config_flags

from cliplite_jax import cli, config_io

from cliplite_jax.data import sources
from cliplite_jax.training import train

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
  """absl flag parsing with one-line errors for bad flags, config files and
  config overrides (every unknown key at once, each with a suggestion)."""
  specs = [a.partition("=")[2] for a in argv if a.startswith("--config=")]
  keys = [a[len("--config."):].partition("=")[0] for a in argv
          if a.startswith("--config.")]
  if specs:
    try:
      config = config_io.load_file(specs[-1])
    except config_io.UserError as e:
      _fail(str(e) + ("" if os.path.isfile(specs[-1].partition(":")[0]) else
                      " (configs live in configs/, e.g. "
                      "--config=configs/default.py)"))
    unknown = config_io.unknown_keys(config, keys)
    if unknown:
      _fail(f"unknown config key{'s' if len(unknown) > 1 else ''} "
            f"{'; '.join(unknown)} (overrides must name fields that "
            f"{specs[-1].partition(':')[0]} defines)")
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _fail(str(e).splitlines()[0])
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections' own parse of an override value.
    _fail(f"bad config override: {str(e).splitlines()[0]}")


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
  def body():
    if FLAGS.distributed or FLAGS.coordinator_address:
      initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                             FLAGS.process_id)
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir,
                             FLAGS.allow_config_change)
  # Ctrl-C where Python's own handler was in place (the loop saves on it).
  cli.run("cliplite_jax.main", argv, body, (sources.DatasetNotPreparedError,),
          interrupted=lambda e: _exit_interrupted())


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, flags_parser=parse_flags)
