"""SigLIP baseline: the COCO model of `coco_rn50_bert.py` with pairwise sigmoid.

Every image–caption pair of the global batch is a binary problem with a
learnable bias (init −10) and temperature (init 1/10, i.e. t = log 10), as in
SigLIP; no Deep InfoMax priors. Accepts `coco_rn50_bert.py`'s arguments, or
`data=shapes` for the embedded demo's model and data.
"""
from cliplite_jax import config_io


def get_config(arg: str | None = None):
  """`coco_rn50_bert.py`'s config for `arg`, with the sigmoid loss."""
  c = config_io.load_baseline_base(__file__, arg)
  c.loss.name = "sigmoid"
  c.loss.prior_img = c.loss.prior_txt = False
  c.loss.init_logit_bias = -10.0
  c.model.init_temperature = 0.1
  return c
