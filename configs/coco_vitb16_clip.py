r"""CLIP-Lite against CLIP on ViT-B/16 over COCO Captions.

configs/coco_rn50_bert.py's comparison with a transformer image tower:
ViT-B/16 at 224 px and CLIP's 12-layer causal text transformer (BPE trained
on the captions), both from scratch, global batch 1024, the same data,
augmentations, evaluation and 250k-step schedule. Transformers train with
AdamW as CLIP trained its ViTs (peak 5e-4, β2 0.98, weight decay 0.2,
10k warmup, cosine to 0, clip 1), in bfloat16.

The argument picks the objective:
  :loss=jsd      CLIP-Lite (default): one negative per pair, JSD bound
  :loss=infonce  CLIP's B×B InfoNCE
  :loss=sigmoid  SigLIP's pairwise sigmoid

Usage (data prepared with `tfds build coco_captions/2014`):
  python -m cliplite_jax.main --config=configs/coco_vitb16_clip.py:loss=infonce \
      --workdir=gs://bucket/cliplite/vitb16_clip
"""
from cliplite_jax import config_io


def get_config(arg: str | None = None):
  """ViT-B/16 + CLIP text over COCO with `arg`'s objective."""
  args = config_io.parse_arg(arg, loss="jsd")
  c = config_io.load_sibling(__file__, "coco_rn50_bert.py", None)
  demo = config_io.load_sibling(__file__, "vit_demo.py", "image=vit,text=clip")
  c.loss.name = args.loss
  c.model.image = demo.model.image
  c.model.image.update(variant="B/16", depth=0, scan=True)
  c.model.text = demo.model.text
  c.model.text.update(vocab_size=49408, hidden=512, layers=12, heads=8,
                      mlp_dim=2048, max_len=77)
  c.data.tokenizer = "bpe"
  c.data.max_tokens = 77
  c.cpu_compiler_options = dict(demo.cpu_compiler_options)
  c.optim.name = "adamw"
  c.optim.b1, c.optim.b2 = 0.9, 0.98
  c.optim.weight_decay = 0.2
  c.optim.lookahead_k = 0
  c.optim.lr = dict(image=5e-4, text=5e-4, other=5e-4)
  c.optim.clip_norm = 1.0
  return c
