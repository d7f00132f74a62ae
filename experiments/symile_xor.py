r"""Symile's higher-order claim on the embedded XOR set: each objective
trained on `configs/symile_xor.py` for every mixing probability p, scored by
zero-shot prediction of each modality from the other two among all 32
values (chance 1/32 = 0.031).

  python experiments/symile_xor.py [--seeds=0] [--root=DIR]
  # ~1 min per run on 2 cores: 3 objectives × 5 p ≈ 15 min per seed

Prints a Markdown table (mean ± sample std, ddof 1, over seeds; with the
best possible top-1 and its binomial standard error on the test set) and
writes experiments/symile_xor.json. Every seed is scored on the same 5,000 test
examples, so the spread over seeds leaves out the test set's own sampling
noise: an accuracy q has a binomial standard error √(q(1 − q)/5000), 0.007
at q = 0.5. Workdirs stay under --root: rerunning skips finished runs.
"""
from __future__ import annotations

import os

import runs

STEPS = 1000
PROBABILITIES = (0.0, 0.25, 0.5, 0.75, 1.0)
OBJECTIVES = ("symile", "symile_lite", "pairwise_infonce")
TARGETS = ("b_from_a+c", "c_from_a+b")
TEST_EXAMPLES = 5000  # the test split of data/symile_xor.py's p configs


def best_possible(p: float) -> float:
  """The best expected top-1 of b from (a, c): b is a XOR c when the
  example mixed (probability p), else a guess among 32."""
  return p + (1 - p) / 32


def main() -> None:
  seeds, root = runs.seeds_and_root(__doc__, "symile_xor", "0")
  results = {}
  for loss in OBJECTIVES:
    for p in PROBABILITIES:
      results[f"{loss} p={p:g}"] = [
          runs.train(os.path.join(root, f"{loss}_p{p:g}_seed{s}"),
                     f"configs/symile_xor.py:p={p:g},loss={loss}", STEPS, s)
          for s in seeds]
  summary = runs.summarise(results, "zeroshot/symile_xor/", TARGETS)
  print(f"\n{STEPS} steps, batch 1000: top-1 of 32 on {TEST_EXAMPLES} test "
        f"examples, mean ± sample std (ddof 1) over {len(seeds)} seeds "
        f"{seeds}\n")
  rows = []
  for target in TARGETS:
    predict = target.replace("_from_", " from ").replace("+", ", ")
    for loss in OBJECTIVES:
      rows.append([predict, f"`{loss}`"] + [
          "{:.3f} ± {:.3f}".format(*summary[f"{loss} p={p:g}"][target])
          for p in PROBABILITIES])
    if target == "b_from_a+c":
      rows.append([predict, "best possible"]
                  + [f"{best_possible(p):.3f}" for p in PROBABILITIES])
      rows.append([predict, f"binomial SE of the best possible, "
                   f"{TEST_EXAMPLES:,} examples"]
                  + [f"{runs.binomial_se(best_possible(p), TEST_EXAMPLES):.3f}"
                     for p in PROBABILITIES])
  print(runs.markdown_table(
      ["predict", "objective"] + [f"p = {p:g}" for p in PROBABILITIES], rows))
  runs.write_json("symile_xor", STEPS, seeds, summary, results)


if __name__ == "__main__":
  main()
