r"""A released CLIP or SigLIP model: score it, or fine-tune it whole.

The argument names the model on local disk (nothing is downloaded):
  :path=DIR    a transformers CLIPModel / SiglipModel directory (config.json,
               model.safetensors, tokenizer.json, preprocessor_config.json)
               or an open_clip directory (open_clip_config.json + weights)
  :path=FILE,arch=NAME  a bare open_clip checkpoint and its model config
               (a name open_clip ships, e.g. ViT-B-32, or a JSON file)
  :tokenizer=PATH  the tokenizer.json of a source without one (a bare
               open_clip file: OpenAI CLIP's)
  :data=NAME   the caption dataset trained on and scored (default: the
               embedded shapes_captions)

The towers, logit scale, SigLIP's bias and the released heads (CLIP's
projections) come from the model, with its tokenizer, pixel statistics and
resolution, so the model is the released one. Scored as released while the
workdir has no checkpoint:

  python -m cliplite_jax.evaluate --config=configs/released.py:path=/models/clip-vit-b32 \
      --workdir=/tmp/clip_b32 --config.eval.transfer='("imagenet2012",)'

Fine-tuned with CLIP-Lite's objective by `main` (AdamW at a fine-tuning
rate; `--config.loss.name=infonce` or `sigmoid` for CLIP's / SigLIP's).
"""
from cliplite_jax import config_io


def get_config(arg: str | None = None):
  """The released model `arg` names (see above), AdamW at 1e-5."""
  args = config_io.parse_arg(arg, path="", arch="", tokenizer="",
                             data="shapes_captions")
  if not args.path:
    raise config_io.UserError(
        "configs/released.py needs the model's path: "
        "--config=configs/released.py:path=DIR")
  c = config_io.load_sibling(__file__, "vit_demo.py", "image=vit,text=clip")
  c.model.init_from = args.path
  c.model.init_arch = args.arch
  c.model.head = "released"
  c.data.name = args.data
  if args.tokenizer:
    c.data.tokenizer = args.tokenizer
  c.data.image_size = 0  # the released resolution
  c.data.crop_scale = (0.9, 1.0)  # fine-tuning: mild crops
  c.optim.lr = dict(image=1e-5, text=1e-5, other=1e-5)
  c.optim.weight_decay = 0.1
  c.optim.warmup_steps = 50
  c.total_steps = 500
  return c
