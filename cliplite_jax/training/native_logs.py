"""Quiet start-up: TensorFlow's (TFDS builds datasets with it) C++ log lines.

Importing TensorFlow writes "WARNING: All log messages before
absl::InitializeLog() is called…", "oneDNN custom operations are on…" and a
CPU-features notice to stderr. None concerns a run: TensorFlow here only
encodes images while a dataset is built, which oneDNN's kernels do not
touch. Entry points call `quiet` before anything imports TensorFlow.
"""
from __future__ import annotations

import os
import sys

_QUIET = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"}


def quiet(argv: list[str] | None = None) -> None:
  """Turns those lines off unless the command line asks for verbosity
  (`--verbosity`, `-v`) or the environment already sets the variables."""
  argv = sys.argv if argv is None else argv
  if any(a.startswith(("--verbosity", "-v", "--v=")) for a in argv[1:]):
    return
  for name, value in _QUIET.items():
    os.environ.setdefault(name, value)
