"""xCLIP baseline (Zhou et al., CVPR 2023): CLIP's InfoNCE plus nCLIP's
non-contrastive term on the same embeddings, on the model of
`coco_rn50_bert.py`.

L = InfoNCE (global batch) + loss.nclip.weight · nCLIP (see
`nclip_baseline.py`). No Deep InfoMax priors. Accepts `coco_rn50_bert.py`'s
arguments, or `data=shapes` for the embedded demo's model and data.
"""
from cliplite_jax import config_io


def get_config(arg: str | None = None):
  """The base config for `arg`, trained with InfoNCE + nCLIP."""
  c = config_io.load_baseline_base(__file__, arg)
  c.loss.name = "xclip"
  c.loss.prior_img = c.loss.prior_txt = False
  if c.data.name != "shapes_captions":
    c.loss.nclip.prototypes = 4096
  return c
