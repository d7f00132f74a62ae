"""Transparent huge pages for the host buffers XLA:CPU allocates every step.

XLA:CPU allocates an executable's temporaries afresh at each call: one 138 MB
block for the demo's train step. glibc serves blocks that large with a new
anonymous mmap, and the kernel zero-fills it 4 KiB page by page when the
step first touches it: a page fault per page, every step. glibc's
`glibc.malloc.hugetlb=1` tunable (glibc ≥ 2.35) makes malloc ask for
transparent huge pages instead: 512× fewer faults. On a 2-core VM the demo's
step became 1.25× faster (BENCHMARKS.md, "Host memory").

Tunables are read only when a process starts, so the command-line entry
points call `reexec_with_huge_pages()` first: it replaces the process (same
PID, arguments and environment) with one that has the tunable set. An
explicit `GLIBC_TUNABLES=glibc.malloc.hugetlb=0` keeps glibc's default.
"""
from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb"
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version() -> tuple[int, int] | None:
  """(major, minor) of the running glibc, or None for another C library."""
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    major, minor = version.split(".")[:2]
    return (int(major), int(minor)) if name == "glibc" else None
  except (AttributeError, ValueError, OSError):
    return None


def _thp_available() -> bool:
  """Whether the kernel grants transparent huge pages to regions that ask."""
  try:
    with open(_THP_SETTING) as f:
      return "[never]" not in f.read()
  except OSError:
    return False


def tunables_with_huge_pages(environ: dict[str, str]) -> str | None:
  """The GLIBC_TUNABLES value to run with, or None to leave `environ` as is.

  None when the tunable is already set (to any value: the user's choice) or
  when this machine cannot use it (not Linux/glibc ≥ 2.35, THP off).
  """
  current = environ.get("GLIBC_TUNABLES", "")
  if TUNABLE + "=" in current:
    return None
  version = _glibc_version()
  if sys.platform != "linux" or version is None or version < (2, 35):
    return None
  if not _thp_available():
    return None
  return f"{current}:{TUNABLE}=1" if current else f"{TUNABLE}=1"


def reexec_with_huge_pages() -> None:
  """Replaces this process with itself under `glibc.malloc.hugetlb=1`.

  Returns without doing anything when `tunables_with_huge_pages` says so;
  otherwise does not return. Call it first thing in a command's __main__,
  before threads start or files are written.
  """
  tunables = tunables_with_huge_pages(os.environ)
  if tunables is None:
    return
  argv = list(getattr(sys, "orig_argv", []))
  if len(argv) < 2:  # an embedded interpreter: nothing to re-run
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable] + argv[1:],
              dict(os.environ, GLIBC_TUNABLES=tunables))
  except OSError:  # cannot re-run (e.g. the interpreter moved): carry on
    return
