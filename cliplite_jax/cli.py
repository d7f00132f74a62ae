"""What every command (`main`, `evaluate`, `prepare`, `embed`,
`export_image`, `export_text`, `export_hf`, `rewrite`) does with bad input and with
Ctrl-C: bad input is a `UserError` (or one of the command's own error
kinds), printed as one line `PROGRAM: error: ...` with exit status 1;
Ctrl-C is one line and status 130 unless the command says otherwise.
"""
from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
  """Bad input from the user: the message names the problem and the fix."""


def run(program: str, argv: list[str], body: Callable[[], None],
        errors: tuple[type[BaseException], ...] = (),
        verbosity: str = "error",
        interrupted: Callable[[KeyboardInterrupt], None] | None = None
        ) -> None:
  """Runs a command's `body` as an absl app's main: no positional
  arguments, absl's logging at `verbosity` unless --verbosity is given, a
  UserError (or one of `errors`) as one line and exit status 1, and Ctrl-C
  as `interrupted(e)` (default: "PROGRAM: interrupted", status 130)."""
  from absl import app, flags, logging
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(verbosity)
  try:
    body()
  except (UserError, *errors) as e:
    sys.exit(f"{program}: error: {e}")
  except KeyboardInterrupt as e:
    if interrupted is None:
      print(f"\n{program}: interrupted", file=sys.stderr)
      sys.exit(130)
    interrupted(e)
