"""Host malloc settings for the buffers XLA:CPU allocates every step.

XLA:CPU allocates an executable's temporaries afresh at each call: one 138 MB
block for the demo's train step, allocated on XLA's worker threads. glibc
serves blocks that large with a new anonymous mmap and unmaps them on free,
so the kernel zero-fills every page again at every step. Three remedies, all
applied by re-running the process once at start (`reexec_with_fast_malloc`),
since glibc and the dynamic loader read them only when a process starts:

- glibc's `glibc.malloc.hugetlb=1` tunable (glibc ≥ 2.35): malloc asks for
  transparent huge pages, 512× fewer faults. The demo's step became 1.18–1.25×
  faster on a 2-core VM.
- three more glibc tunables that keep freed memory instead of returning it to
  the kernel: `mmap_threshold=32 MiB` (blocks below it come from malloc's
  heaps, not a fresh mmap), `trim_threshold=4 GiB` (a heap's free top is not
  given back) and `top_pad=64 MiB` (heaps grow in steps that large, and an
  emptied thread heap is kept). With the demo config's XLA option that puts
  the temporaries in blocks of at most 16 MiB (configs/default.py), the
  step's ~480 page faults drop to a few and it runs 1.155× faster than with
  huge pages alone (BENCHMARKS.md, "Host memory"); the process keeps its
  peak heap instead of returning it.
- tcmalloc, when the machine has it (Debian/Ubuntu: `apt install
  libtcmalloc-minimal4`), loaded with LD_PRELOAD: it keeps freed blocks
  mapped, so the pages are zero-filled once, not every step. Another 1.14×
  on the demo's step (BENCHMARKS.md, "Host memory").

An explicit `GLIBC_TUNABLES=glibc.malloc.hugetlb=0` keeps glibc's defaults for
all four tunables (any value of `hugetlb` does: the user's choice); any
LD_PRELOAD already set, even empty (`LD_PRELOAD=`), keeps tcmalloc out.
"""
from __future__ import annotations

import ctypes.util
import os
import sys
from typing import Callable

TUNABLE = "glibc.malloc.hugetlb"
# Each is added unless the user's GLIBC_TUNABLES already sets it.
RETAIN_TUNABLES = {
    "glibc.malloc.mmap_threshold": 32 << 20,
    "glibc.malloc.trim_threshold": 4 << 30,
    "glibc.malloc.top_pad": 64 << 20,
}
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
# gperftools' libraries, the minimal one (no heap profiler) first.
TCMALLOC_NAMES = ("tcmalloc_minimal", "tcmalloc")


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

  `glibc.malloc.hugetlb=1` and RETAIN_TUNABLES are appended to the user's
  own tunables, skipping any the user already sets. None when hugetlb is
  already set (to any value: the user's choice) or when this machine cannot
  use it (not Linux/glibc ≥ 2.35, THP off).
  """
  current = environ.get("GLIBC_TUNABLES", "")
  if TUNABLE + "=" in current:
    return None
  version = _glibc_version()
  if sys.platform != "linux" or version is None or version < (2, 35):
    return None
  if not _thp_available():
    return None
  added = [f"{TUNABLE}=1"] + [
      f"{name}={value}" for name, value in RETAIN_TUNABLES.items()
      if name + "=" not in current]
  return ":".join(([current] if current else []) + added)


def tcmalloc_preload(
    environ: dict[str, str],
    find_library: Callable[[str], str | None] = ctypes.util.find_library,
) -> str | None:
  """The LD_PRELOAD value that loads tcmalloc, or None to leave it unset.

  None when LD_PRELOAD is already in `environ` (any value: the user's
  choice), off Linux, or when `find_library` (the dynamic loader's search,
  as `ctypes.util.find_library`) finds none of TCMALLOC_NAMES.
  """
  if "LD_PRELOAD" in environ or sys.platform != "linux":
    return None
  for name in TCMALLOC_NAMES:
    found = find_library(name)
    if found:
      return found
  return None


def fast_malloc_environment(environ: dict[str, str]) -> dict[str, str]:
  """The variables to add to `environ` (empty: nothing to change)."""
  changes = {}
  tunables = tunables_with_huge_pages(environ)
  if tunables is not None:
    changes["GLIBC_TUNABLES"] = tunables
  preload = tcmalloc_preload(environ)
  if preload is not None:
    changes["LD_PRELOAD"] = preload
  return changes


def reexec_with_fast_malloc() -> None:
  """Replaces this process with itself under `fast_malloc_environment`.

  Returns without doing anything when there is nothing to change (as after
  the re-run); otherwise does not return. Call it first thing in a
  command's __main__, before threads start or files are written. Silent, so
  that a bad command line still gets exactly one error line.
  """
  changes = fast_malloc_environment(os.environ)
  if not changes:
    return
  argv = list(getattr(sys, "orig_argv", []))
  if len(argv) < 2:  # an embedded interpreter: nothing to re-run
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable] + argv[1:],
              dict(os.environ, **changes))
  except OSError:  # cannot re-run (e.g. the interpreter moved): carry on
    return
