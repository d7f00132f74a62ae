"""The entry points' re-execution with malloc on transparent huge pages."""
import os
import subprocess
import sys

import pytest

from cliplite_jax import host_memory

SUPPORTED = host_memory.tunables_with_huge_pages({}) is not None
needs_support = pytest.mark.skipif(
    not SUPPORTED, reason="needs Linux, glibc >= 2.35 and THP not 'never'")

# Prints a line before and after the call: a re-executed process prints the
# first line twice, with the same PID.
_PROGRAM = """
import os, sys
print("start", os.getpid(), flush=True)
from cliplite_jax import host_memory
host_memory.reexec_with_huge_pages()
print("after", os.getpid(), os.environ.get("GLIBC_TUNABLES", ""), sys.argv[1:])
"""


def _run(tunables):
  env = dict(os.environ)
  env.pop("GLIBC_TUNABLES", None)
  if tunables is not None:
    env["GLIBC_TUNABLES"] = tunables
  out = subprocess.run([sys.executable, "-c", _PROGRAM, "--flag=1", "x"],
                       env=env, capture_output=True, text=True, check=True)
  return [line.split(" ", 2) for line in out.stdout.splitlines()]


@needs_support
def test_tunable_is_added_to_the_users_own():
  assert (host_memory.tunables_with_huge_pages({})
          == "glibc.malloc.hugetlb=1")
  assert (host_memory.tunables_with_huge_pages(
      {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
          == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")


def test_an_explicit_setting_is_left_alone():
  for value in ("glibc.malloc.hugetlb=0", "x=1:glibc.malloc.hugetlb=1"):
    assert host_memory.tunables_with_huge_pages(
        {"GLIBC_TUNABLES": value}) is None


@needs_support
def test_process_reexecutes_once_with_same_pid_and_arguments():
  lines = _run(None)
  assert [line[0] for line in lines] == ["start", "start", "after"]
  pid = lines[0][1]
  assert lines[1][1] == pid and lines[2][1] == pid
  tunables, argv = lines[2][2].split(" ", 1)
  assert tunables == "glibc.malloc.hugetlb=1"
  assert argv == "['--flag=1', 'x']"


def test_opting_out_runs_once_unchanged():
  lines = _run("glibc.malloc.hugetlb=0")
  assert [line[0] for line in lines] == ["start", "after"]
  assert lines[1][2].startswith("glibc.malloc.hugetlb=0 ")
