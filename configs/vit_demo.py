"""The embedded CPU demo with CLIP's towers: a 4-block ViT-Ti/16 (a 4 × 4
grid of patches at 64 px) and CLIP's causal text transformer, trained with
CLIP-Lite on `shapes_captions`.

The data, batch, steps and heads are `default.py`'s. Transformers train
with AdamW and a short warmup rather than the ResNet's SGD + Lookahead
(as CLIP, open_clip and big_vision train them). The argument is
`default.py`'s, e.g. `:image=vit,text=siglip`; the objective is a field
(`--config.loss.name=infonce`).

Usage:
  python -m cliplite_jax.main --config=configs/vit_demo.py --workdir=/tmp/vit
"""
from cliplite_jax import config_io


def get_config(arg: str | None = None):
  """`default.py`'s demo with ViT and CLIP-text towers (or `arg`'s)."""
  args = config_io.parse_arg(arg, image="vit", text="clip")
  c = config_io.load_sibling(__file__, "default.py",
                             f"image={args.image},text={args.text}")
  c.optim.name = "adamw"
  c.optim.b1, c.optim.b2 = 0.9, 0.98  # CLIP's
  c.optim.weight_decay = 0.1
  c.optim.lookahead_k = 0
  c.optim.lr = dict(image=1e-3, text=1e-3, other=1e-3)
  c.optim.warmup_steps = 100
  c.optim.clip_norm = 1.0
  return c
