r"""CLIP-Lite's critics on the embedded set, over seeds: the demo
(configs/default.py, 1000 steps, batch 64) with `loss.critic` changed, the
paper's dot-product critic against the reference code's others: concat (an
MLP on the towers' concatenated features), and condot / dotcon, which also
pick the critic of its image–image and text–text terms (on here with
weight 1, as the reference adds them, so their rows also measure those
terms), and the dot critic with cluster hard negatives (k = 8 over the
batch's captions from step 500 of 1000, refreshed every 100 steps; the
reference starts at half its schedule too). All trained by this
invocation.

  python experiments/critics_shapes.py [--seeds=0,1,2] [--root=DIR]
  # 3.5 min per run on 2 cores, 5.5 with the extra terms (a second view
  # of each image and caption): 5 variants × 3 seeds ≈ 65 min

A concat critic trains no embedding, so both are scored by what reads the
image tower's features: the linear probe (the colour of the largest shape)
and the SVMs (which shapes are present). Prints a Markdown table of mean ±
sample std (ddof 1) over seeds and each critic's paired difference from
dot with its 95 % t interval, and writes experiments/critics_shapes.json.
"""
from __future__ import annotations

import os

import runs

STEPS = 1000
FEATURE_PROBES = '--config.eval.probes=("linear","svm")'
TERMS = ["--config.loss.image_image=1.0", "--config.loss.text_text=1.0"]
CRITICS = {"dot": [], "concat": ["--config.loss.critic=concat"],
           "condot": ["--config.loss.critic=condot", *TERMS],
           "dotcon": ["--config.loss.critic=dotcon", *TERMS],
           "clusters": ["--config.loss.negatives=clusters",
                        "--config.loss.clusters.start_step=500"]}
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
  for name in list(CRITICS)[1:]:
    diffs = [runs.paired_difference([r[key] for r in results[name]],
                                    [r[key] for r in results["dot"]])
             for key in COLUMNS.values()]
    rows.append([f"{name} − dot (95 % t interval)"] + [
        f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
        for d in diffs])
  print(runs.markdown_table(["critic", *COLUMNS], rows))
  runs.write_json("critics_shapes", STEPS, seeds, summary, results)


if __name__ == "__main__":
  main()
