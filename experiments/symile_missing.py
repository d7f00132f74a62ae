r"""Symile's missing modalities on the embedded XOR set (p = 1): each
modality of a training example is missing with probability 0.25 or 0.5
(`configs/symile_xor.py:missing=...`, Symile's `binary_xor_missing`), and a
missing modality goes in as its zeros or with Symile's missingness
indicator (`fill=indicator`: a learned embedding of the flag beside the
values). Both fills train in the same invocation, on the same seeds.

  python experiments/symile_missing.py [--seeds=0,1,2] [--root=DIR]
  # ~1 min per run on 2 cores: 2 rates × 2 fills × 3 seeds ≈ 12 min

Scored by zero-shot prediction of each modality from the other two among
its 32 values on the 5,000 complete test examples (chance 1/32). A missing
modality's zeros are also a real value (00000), which only the indicator
tells apart. Prints a Markdown table (mean ± sample std, ddof 1, over
seeds, and the paired difference indicator − zeros with its 95 % t
interval) and writes experiments/symile_missing.json.
"""
from __future__ import annotations

import os

import runs

STEPS = 1000
RATES = (0.25, 0.5)
FILLS = ("zeros", "indicator")
TARGETS = ("a_from_b+c", "b_from_a+c", "c_from_a+b")


def main() -> None:
  seeds, root = runs.seeds_and_root(__doc__, "symile_missing", "0,1,2")
  results = {}
  for rate in RATES:
    for fill in FILLS:
      results[f"missing={rate:g} fill={fill}"] = [
          runs.train(os.path.join(root, f"m{rate:g}_{fill}_seed{s}"),
                     f"configs/symile_xor.py:missing={rate:g},fill={fill}",
                     STEPS, s)
          for s in seeds]
  summary = runs.summarise(results, "zeroshot/symile_xor/", TARGETS)
  print(f"\n`symile`, p = 1, {STEPS} steps, batch 1000: top-1 of 32 on the "
        f"5,000 complete test examples, mean ± sample std (ddof 1) over "
        f"{len(seeds)} seeds {seeds}\n")
  rows = []
  for rate in RATES:
    for fill in FILLS:
      name = f"missing={rate:g} fill={fill}"
      rows.append([f"{rate:g}", fill] + [
          "{:.3f} ± {:.3f}".format(*summary[name][t]) for t in TARGETS])
    diffs = [runs.paired_difference(
        [r[f"zeroshot/symile_xor/{t}"]
         for r in results[f"missing={rate:g} fill=indicator"]],
        [r[f"zeroshot/symile_xor/{t}"]
         for r in results[f"missing={rate:g} fill=zeros"]])
        for t in TARGETS]
    rows.append([f"{rate:g}", "indicator − zeros (95 % t interval)"] + [
        f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
        for d in diffs])
  print(runs.markdown_table(
      ["missing", "fill"] + [t.replace("_from_", " from ").replace("+", ", ")
                             for t in TARGETS], rows))
  runs.write_json("symile_missing", STEPS, seeds, summary, results)


if __name__ == "__main__":
  main()
