r"""The train step with and without transparent huge pages for malloc.

  python bench/huge_pages.py --preset=demo --pairs=3

glibc tunables are fixed when a process starts, so each setting runs in its
own `bench/train_step.py` run (JAX steps interleaved with PyTorch's, which
run in a child process with the same setting), alternating `glibc.malloc.hugetlb=0` (glibc's default) and `=1` (what
`cliplite_jax.main` runs with, cliplite_jax/host_memory.py) for `--pairs`
pairs, the order flipped every pair. Prints each run's step times and kernel
CPU per step, then the medians and the speed-ups.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SETTINGS = {"glibc default": "glibc.malloc.hugetlb=0",
            "huge pages": "glibc.malloc.hugetlb=1"}
# "  jax step   97.2 ms   658.2 img/s   (kernel CPU 12.3 ms/step)"
_LINE = re.compile(r"^\s+(jax|torch) step\s+([\d.]+) ms.*kernel CPU ([\d.]+)")


def run_once(preset: str, tunables: str, extra: list[str]) -> dict:
  """{"jax": (ms, kernel ms), "torch": ...} from one train_step.py process."""
  env = dict(os.environ, GLIBC_TUNABLES=tunables)
  out = subprocess.run(
      [sys.executable, os.path.join(HERE, "train_step.py"),
       f"--preset={preset}", *extra],
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
  parser.add_argument("--pairs", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=3,
                      help="train_step.py rounds per process")
  parser.add_argument("--notorch", action="store_true")
  args = parser.parse_args()
  extra = [f"--rounds={args.rounds}"] + (["--notorch"] if args.notorch else [])
  results = {name: [] for name in SETTINGS}
  for pair in range(args.pairs):
    order = list(SETTINGS) if pair % 2 == 0 else list(SETTINGS)[::-1]
    for name in order:
      found = run_once(args.preset, SETTINGS[name], extra)
      results[name].append(found)
      print(f"pair {pair + 1} {name:13s} " + "   ".join(
          f"{fw} {ms:6.1f} ms (kernel {kernel:4.1f})"
          for fw, (ms, kernel) in found.items()), flush=True)
  print(f"\n{args.preset}, medians of {args.pairs} processes per setting")
  medians = {}
  for name, runs in results.items():
    medians[name] = {fw: statistics.median(r[fw][0] for r in runs)
                     for fw in runs[0]}
    kernel = {fw: statistics.median(r[fw][1] for r in runs) for fw in runs[0]}
    print(f"  {name:13s} " + "   ".join(
        f"{fw} {medians[name][fw]:6.1f} ms (kernel CPU {kernel[fw]:4.1f} ms)"
        for fw in medians[name]))
  base, huge = medians["glibc default"], medians["huge pages"]
  for fw in base:
    print(f"  {fw}: huge pages / default speed {base[fw] / huge[fw]:.2f}")
  if "torch" in base:
    for name, m in medians.items():
      print(f"  jax / torch speed, {name}: {m['torch'] / m['jax']:.2f}")


if __name__ == "__main__":
  main()
