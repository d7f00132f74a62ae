r"""Every two-tower objective on the embedded set, over seeds: the demo's
model, data, steps and batch, only the loss changed.

  python experiments/objectives_shapes.py [--seeds=0,1,2] [--root=DIR]
  # ~3.5 min per run on 2 cores: 6 objectives × 3 seeds ≈ 1 hour
  python experiments/objectives_shapes.py --towers=vit
  # configs/vit_demo.py (ViT-Ti/16 + CLIP text): JSD, InfoNCE, SigLIP

Each run is `python -m cliplite_jax.main --config=CONFIG --config.seed=S`
with CONFIG from OBJECTIVES below (configs/default.py for CLIP-Lite, the
baselines' `:data=shapes`). Prints a Markdown table of mean ± sample std
(ddof 1) over seeds and writes experiments/objectives_shapes.json (every run's
metrics and the same summary). Workdirs stay under --root:
rerunning skips finished runs.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import runs

STEPS = 1000
OBJECTIVES = {
    "jsd (CLIP-Lite)": ["configs/default.py"],
    "infonce (CLIP)": ["configs/clip_baseline.py:data=shapes"],
    "sigmoid (SigLIP)": ["configs/siglip_baseline.py:data=shapes"],
    "nclip": ["configs/nclip_baseline.py:data=shapes"],
    "xclip": ["configs/xclip_baseline.py:data=shapes"],
    "jsd_nclip": ["configs/default.py", "--config.loss.name=jsd_nclip"],
}
# The ViT demo's towers and optimiser; each objective's own settings as
# its baseline config sets them (SigLIP: temperature 1/10, bias −10).
VIT_OBJECTIVES = {
    "jsd (CLIP-Lite)": ["configs/vit_demo.py"],
    "infonce (CLIP)": ["configs/vit_demo.py", "--config.loss.name=infonce"],
    "sigmoid (SigLIP)": ["configs/vit_demo.py", "--config.loss.name=sigmoid",
                         "--config.model.init_temperature=0.1",
                         "--config.loss.init_logit_bias=-10.0"],
}
STUDIES = {"resnet": ("objectives_shapes", OBJECTIVES),
           "vit": ("objectives_vit", VIT_OBJECTIVES)}
COLUMNS = {
    "zero-shot shape": "zeroshot/shapes_captions/top1",
    "zero-shot colour": "zeroshot/shapes_captions_color/top1",
    "linear": "linear/shapes_captions/top1",
    "SVM mAP": "svm/shapes_captions/map",
    "i2t R@5": "retrieval/shapes_captions/i2t_r5",
    "t2i R@5": "retrieval/shapes_captions/t2i_r5",
    "modality gap": "gap/shapes_captions/modality_gap",
}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--towers", choices=sorted(STUDIES), default="resnet")
  parser.add_argument("--root", default=None,
                      help="workdirs' folder (default: a temporary one)")
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  study, objectives = STUDIES[args.towers]
  root = args.root or os.path.join(tempfile.gettempdir(),
                                   f"cliplite_{study}")
  table = {}
  for name, (config, *overrides) in objectives.items():
    tag = name.split()[0]
    table[name] = [runs.train(os.path.join(root, f"{tag}_seed{s}"),
                              config, STEPS, s, overrides) for s in seeds]
  summary = {name: {col: runs.mean_std(results, key)
                    for col, key in COLUMNS.items()}
             for name, results in table.items()}
  print(f"\n{STEPS} steps, batch 64: mean ± sample std (ddof 1) over "
        f"{len(seeds)} seeds {seeds}\n")
  print(runs.markdown_table(
      ["objective", *COLUMNS],
      [[name] + [f"{m:.3f} ± {s:.3f}" for m, s in cols.values()]
       for name, cols in summary.items()]))
  runs.write_json(study, STEPS, seeds, summary, table)


if __name__ == "__main__":
  main()
