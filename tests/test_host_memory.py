"""The entry points' re-execution with malloc on transparent huge pages and,
where the machine has it, tcmalloc."""
import ctypes.util
import os
import subprocess
import sys

import pytest

from cliplite_jax.training import host_memory

SUPPORTED = host_memory.tunables_with_huge_pages({}) is not None
needs_support = pytest.mark.skipif(
    not SUPPORTED, reason="needs Linux, glibc >= 2.35 and THP not 'never'")

# Prints a line before and after the call: a re-executed process prints the
# first line twice, with the same PID.
_PROGRAM = """
import os, sys
print("start", os.getpid(), flush=True)
from cliplite_jax.training import host_memory
host_memory.reexec_with_fast_malloc()
print("after", os.getpid(), os.environ.get("GLIBC_TUNABLES", ""), sys.argv[1:])
"""


def _run(tunables, program=_PROGRAM, preload=""):
  """Output lines, split; `preload` None leaves LD_PRELOAD unset."""
  env = dict(os.environ)
  env.pop("GLIBC_TUNABLES", None)
  env.pop("LD_PRELOAD", None)
  if tunables is not None:
    env["GLIBC_TUNABLES"] = tunables
  if preload is not None:
    env["LD_PRELOAD"] = preload
  out = subprocess.run([sys.executable, "-c", program, "--flag=1", "x"],
                       env=env, capture_output=True, text=True, check=True)
  return [line.split(" ", 2) for line in out.stdout.splitlines()]


RETAIN = ("glibc.malloc.mmap_threshold=33554432"
          ":glibc.malloc.trim_threshold=4294967296"
          ":glibc.malloc.top_pad=67108864")


@needs_support
def test_tunables_are_added_to_the_users_own():
  assert (host_memory.tunables_with_huge_pages({})
          == "glibc.malloc.hugetlb=1:" + RETAIN)
  assert (host_memory.tunables_with_huge_pages(
      {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
          == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1:" + RETAIN)


@needs_support
def test_the_users_own_retention_tunable_is_kept_not_repeated():
  users = "glibc.malloc.trim_threshold=1000"
  assert (host_memory.tunables_with_huge_pages({"GLIBC_TUNABLES": users})
          == users + ":glibc.malloc.hugetlb=1"
          ":glibc.malloc.mmap_threshold=33554432"
          ":glibc.malloc.top_pad=67108864")


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
  assert tunables == "glibc.malloc.hugetlb=1:" + RETAIN
  assert argv == "['--flag=1', 'x']"


def test_opting_out_runs_once_unchanged():
  lines = _run("glibc.malloc.hugetlb=0")
  assert [line[0] for line in lines] == ["start", "after"]
  assert lines[1][2].startswith("glibc.malloc.hugetlb=0 ")


def test_tcmalloc_is_found_by_name_minimal_first():
  libraries = {"tcmalloc_minimal": "libtcmalloc_minimal.so.4",
               "tcmalloc": "libtcmalloc.so.4"}
  assert (host_memory.tcmalloc_preload({}, libraries.get)
          == "libtcmalloc_minimal.so.4")
  assert (host_memory.tcmalloc_preload({}, {"tcmalloc": "libtcmalloc.so.4"}.get)
          == "libtcmalloc.so.4")
  assert host_memory.tcmalloc_preload({}, {}.get) is None


def test_any_ld_preload_keeps_tcmalloc_out():
  def finder(name):
    raise AssertionError("searched despite LD_PRELOAD")
  for value in ("", "/opt/other.so"):
    assert host_memory.tcmalloc_preload({"LD_PRELOAD": value}, finder) is None
  assert host_memory.fast_malloc_environment(
      {"LD_PRELOAD": "", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) == {}


_MAPS_PROGRAM = """
import os
print("start", os.getpid(), flush=True)
from cliplite_jax.training import host_memory
host_memory.reexec_with_fast_malloc()
with open("/proc/self/maps") as f:
  print("after", os.getpid(), "tcmalloc" in f.read())
"""


@pytest.mark.skipif(not ctypes.util.find_library("tcmalloc_minimal"),
                    reason="needs libtcmalloc_minimal (libtcmalloc-minimal4)")
def test_process_reexecutes_with_tcmalloc_loaded_where_installed():
  lines = _run("glibc.malloc.hugetlb=0", _MAPS_PROGRAM, preload=None)
  assert [line[0] for line in lines] == ["start", "start", "after"]
  assert lines[2] == ["after", lines[0][1], "True"]
  assert _run("glibc.malloc.hugetlb=0", _MAPS_PROGRAM)[-1][2] == "False"
