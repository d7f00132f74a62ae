r"""Trains CLIP-Lite; resumes when WORKDIR already has checkpoints.

  python -m cliplite_jax.main --config=configs/default.py --workdir=/tmp/demo \
      [--config.total_steps=300 ...]

`--config=path.py:arg` selects a variant through the file's `get_config(arg)`.
"""
from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cliplite_jax import config_io, train
from cliplite_jax.data import sources

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and "
                    "evaluation results; an existing one is resumed.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR)  # Keep the progress lines readable.
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (config_io.UserError, sources.DatasetNotPreparedError) as e:
    sys.exit(f"cliplite_jax.main: error: {e}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
