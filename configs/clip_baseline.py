"""CLIP baseline: the COCO model of `coco_rn50_bert.py` trained with InfoNCE.

InfoNCE over the global batch (B×B logits, embeddings gathered across
devices) instead of CLIP-Lite's JSD bound; no Deep InfoMax priors. Accepts
the same arguments as `coco_rn50_bert.py`, e.g. `clip_baseline.py:batch=256`,
or `clip_baseline.py:data=shapes` for the embedded demo's model and data.
"""
from cliplite_jax import config_io


def get_config(arg: str | None = None):
  """`coco_rn50_bert.py`'s config for `arg`, with the InfoNCE loss."""
  c = config_io.load_baseline_base(__file__, arg)
  c.loss.name = "infonce"
  c.loss.prior_img = c.loss.prior_txt = False
  return c
