"""xCLIP baseline (Zhou et al., CVPR 2023): CLIP's InfoNCE plus nCLIP's
non-contrastive term on the same embeddings, on the model of
`coco_rn50_bert.py`.

L = InfoNCE (global batch) + loss.nclip.weight · nCLIP (see
`nclip_baseline.py`, whose prototypes and values it takes). No Deep
InfoMax priors. Accepts `coco_rn50_bert.py`'s arguments, or `data=shapes`
for the embedded demo's model and data.
"""
from cliplite_jax import config_io


def get_config(arg: str | None = None):
  """`nclip_baseline.py`'s config for `arg`, with InfoNCE added."""
  c = config_io.load_sibling(__file__, "nclip_baseline.py", arg)
  c.loss.name = "xclip"
  return c
