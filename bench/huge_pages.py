r"""The train step under each malloc setting, and under the default.

  python bench/huge_pages.py --preset=demo --pairs=3
  python bench/huge_pages.py --notorch \
      --preload=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4

glibc tunables are fixed when a process starts, so each setting runs in its
own `bench/train_step.py` run (JAX steps interleaved with PyTorch's, which
run in a child process with the same setting):

- "glibc default": `glibc.malloc.hugetlb=0`, the step's temporaries in one
  block (`xla_multiheap_size_constraint_per_heap=-1`);
- "huge pages": `glibc.malloc.hugetlb=1`, one block;
- "huge pages, heaps kept": what `cliplite_jax.main` runs with
  (cliplite_jax/training/host_memory.py): huge pages, glibc keeping freed memory, and
  the config's own XLA options (the demo's split temporaries into blocks
  malloc keeps);
- given `--preload`, another malloc loaded with LD_PRELOAD, one block
  (tcmalloc keeps freed blocks mapped).

`--pairs` rounds, one process per setting each, the order rotated every
round. Prints each run's step times and kernel CPU per step, then the
medians and the speed-ups.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from cliplite_jax.training import host_memory  # noqa: E402

ONE_BLOCK = ["--set=cpu_compiler_options."
             "xla_multiheap_size_constraint_per_heap=-1"]
# name: (environment, train_step.py arguments). LD_PRELOAD set (empty): no
# tcmalloc, even where the machine has it.
SETTINGS = {
    "glibc default": ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0",
                       "LD_PRELOAD": ""}, ONE_BLOCK),
    "huge pages": ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
                    "LD_PRELOAD": ""}, ONE_BLOCK),
    "huge pages, heaps kept": (
        {"GLIBC_TUNABLES": host_memory.tunables_with_huge_pages({}) or "",
         "LD_PRELOAD": ""}, []),
}
# "  jax step   97.2 ms   658.2 img/s   (kernel CPU 12.3 ms/step)"
_LINE = re.compile(r"^\s+(jax|torch) step\s+([\d.]+) ms.*kernel CPU ([\d.]+)")


def run_once(preset: str, setting: tuple[dict[str, str], list[str]],
             extra: list[str]) -> dict:
  """{"jax": (ms, kernel ms), "torch": ...} from one train_step.py process
  run with the environment variables and arguments of `setting`."""
  variables, arguments = setting
  env = dict(os.environ, **variables)
  out = subprocess.run(
      [sys.executable, os.path.join(HERE, "train_step.py"),
       f"--preset={preset}", *arguments, *extra],
      env=env, check=True, capture_output=True, text=True).stdout
  found = {}
  for line in out.splitlines():
    match = _LINE.match(line)
    if match:
      found[match[1]] = (float(match[2]), float(match[3]))
  if "jax" not in found:
    raise RuntimeError(f"train_step.py printed no step time:\n{out}")
  return found


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="demo")
  parser.add_argument("--pairs", type=int, default=3,
                      help="rounds of one process per setting")
  parser.add_argument("--rounds", type=int, default=3,
                      help="train_step.py rounds per process")
  parser.add_argument("--notorch", action="store_true")
  parser.add_argument("--preload", default="",
                      help="also time a malloc library loaded with LD_PRELOAD")
  args = parser.parse_args()
  settings = dict(SETTINGS)
  if args.preload:
    if not os.path.isfile(args.preload):
      sys.exit(f"--preload: no such file: {args.preload}")
    # Both variables set, so train_step.py does not re-run itself.
    settings[os.path.basename(args.preload).split(".so")[0]] = ({
        "LD_PRELOAD": args.preload, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"},
        ONE_BLOCK)
  extra = [f"--rounds={args.rounds}"] + (["--notorch"] if args.notorch else [])
  names = list(settings)
  width = max(map(len, names))
  results = {name: [] for name in names}
  for pair in range(args.pairs):
    shift = pair % len(names)
    for name in names[shift:] + names[:shift]:
      found = run_once(args.preset, settings[name], extra)
      results[name].append(found)
      print(f"round {pair + 1} {name:{width}s} " + "   ".join(
          f"{fw} {ms:6.1f} ms (kernel {kernel:4.1f})"
          for fw, (ms, kernel) in found.items()), flush=True)
  print(f"\n{args.preset}, medians of {args.pairs} processes per setting")
  medians = {}
  for name, runs in results.items():
    medians[name] = {fw: statistics.median(r[fw][0] for r in runs)
                     for fw in runs[0]}
    kernel = {fw: statistics.median(r[fw][1] for r in runs) for fw in runs[0]}
    print(f"  {name:{width}s} " + "   ".join(
        f"{fw} {medians[name][fw]:6.1f} ms (kernel CPU {kernel[fw]:4.1f} ms)"
        for fw in medians[name]))
  base = medians["glibc default"]
  for name in names[1:]:
    for fw in base:
      print(f"  {fw}: {name} / glibc default speed "
            f"{base[fw] / medians[name][fw]:.2f}")
  if "torch" in base:
    for name, m in medians.items():
      print(f"  jax / torch speed, {name}: {m['torch'] / m['jax']:.2f}")


if __name__ == "__main__":
  main()
