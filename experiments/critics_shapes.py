r"""CLIP-Lite's critics on the embedded set, over seeds: the demo
(configs/default.py, 1000 steps, batch 64) with `loss.critic` changed, the
paper's dot-product critic against the reference code's concat critic (an
MLP on the towers' concatenated features), both trained by this invocation.

  python experiments/critics_shapes.py [--seeds=0,1,2] [--root=DIR]
  # ~3.5 min per run on 2 cores: 2 critics × 3 seeds ≈ 20 min

A concat critic trains no embedding, so both are scored by what reads the
image tower's features: the linear probe (the colour of the largest shape)
and the SVMs (which shapes are present). Prints a Markdown table of mean ±
sample std (ddof 1) over seeds and the paired difference concat − dot with
its 95 % t interval, and writes experiments/critics_shapes.json.
"""
from __future__ import annotations

import os

import runs

STEPS = 1000
FEATURE_PROBES = '--config.eval.probes=("linear","svm")'
CRITICS = {"dot": [], "concat": ["--config.loss.critic=concat"]}
COLUMNS = {"linear": "linear/shapes_captions/top1",
           "SVM mAP": "svm/shapes_captions/map"}


def main() -> None:
  seeds, root = runs.seeds_and_root(__doc__, "critics_shapes")
  results = {name: [runs.train(os.path.join(root, f"{name}_seed{s}"),
                               "configs/default.py", STEPS, s,
                               [FEATURE_PROBES, *overrides]) for s in seeds]
             for name, overrides in CRITICS.items()}
  summary = runs.summarise(results, "", COLUMNS.values())
  print(f"\n{STEPS} steps, batch 64: mean ± sample std (ddof 1) over "
        f"{len(seeds)} seeds {seeds}\n")
  rows = [[f"`{name}`"] + ["{:.3f} ± {:.3f}".format(*summary[name][key])
                           for key in COLUMNS.values()]
          for name in CRITICS]
  diffs = [runs.paired_difference([r[key] for r in results["concat"]],
                                  [r[key] for r in results["dot"]])
           for key in COLUMNS.values()]
  rows.append(["concat − dot (95 % t interval)"] + [
      f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" for d in diffs])
  print(runs.markdown_table(["critic", *COLUMNS], rows))
  runs.write_json("critics_shapes", STEPS, seeds, summary, results)


if __name__ == "__main__":
  main()
