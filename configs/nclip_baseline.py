"""nCLIP baseline (Zhou et al., CVPR 2023): non-contrastive image–text
pretraining on the model of `coco_rn50_bert.py`.

Both embeddings are scored against K shared prototypes; each modality's
assignment predicts the other's sharpened one, and mean-entropy
maximisation of the batch-average assignment keeps them from collapsing
(`cliplite_jax/objectives/noncontrastive.py`). No negatives, no Deep InfoMax priors;
only a [K] batch mean crosses devices. The paper's code is unpublished:
every value below is a field (`loss.nclip.*`).

Accepts `coco_rn50_bert.py`'s arguments, or `data=shapes` for the embedded
demo's model and data:
  python -m cliplite_jax.main --config=configs/nclip_baseline.py:data=shapes \
      --workdir=/tmp/nclip
"""
from cliplite_jax import config_io


def get_config(arg: str | None = None):
  """The base config for `arg`, trained with nCLIP alone."""
  c = config_io.load_baseline_base(__file__, arg)
  c.loss.name = "nclip"
  c.loss.prior_img = c.loss.prior_txt = False
  if c.data.name != "shapes_captions":
    c.loss.nclip.prototypes = 4096
  return c
