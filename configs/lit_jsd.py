r"""LiT with CLIP-Lite's objective: a locked released image tower, a text
tower trained from scratch against it with the Jensen-Shannon bound.

Locked-image tuning (Zhai et al., 2022) trains the text tower against a
frozen pretrained image tower with InfoNCE; here the objective is
CLIP-Lite's JSD with one negative per pair. The image tower runs in
inference mode and gets no gradient, update or optimiser state; the
CLIP-Lite heads and the text tower learn.

The argument:
  :image=PATH   the released model whose image tower is taken (a transformers
                CLIPModel / SiglipModel directory or an open_clip one);
                its resolution and pixel statistics come with it
  :data=shapes|coco  the embedded demo set (default) or COCO Captions, with
                a 12-layer CLIP text transformer and batch 1024
  :loss=jsd|infonce|sigmoid  the objective (default jsd: CLIP-Lite's)

Usage:
  python -m cliplite_jax.main --config=configs/lit_jsd.py:image=/models/clip-vit-b16 \
      --workdir=/tmp/lit
"""
from cliplite_jax import config_io


def get_config(arg: str | None = None):
  """LiT with `arg`'s released image tower, data and objective."""
  args = config_io.parse_arg(arg, image="", data="shapes", loss="jsd")
  if not args.image:
    raise config_io.UserError(
        "configs/lit_jsd.py needs the released model: "
        "--config=configs/lit_jsd.py:image=DIR")
  if args.data not in ("shapes", "coco"):
    raise config_io.UserError(f"data must be shapes or coco, got "
                              f"{args.data!r}")
  c = config_io.load_sibling(__file__, "vit_demo.py", "image=vit,text=clip")
  c.loss.name = args.loss
  c.model.image.init_from = args.image
  c.model.image.locked = True
  c.data.image_size = 0  # the released tower's resolution
  # LiT's optimiser for the trained parts: AdamW 1e-3, small decay.
  c.optim.lr = dict(image=0.0, text=1e-3, other=1e-3)
  c.optim.weight_decay = 1e-4
  if args.data == "coco":
    c.data.name = "coco_captions"
    c.data.train_split = "train+restval"
    c.data.max_tokens = 77
    c.data.crop_scale = (0.5, 1.0)
    c.data.flip = False
    c.data.num_threads = 16
    c.model.text.update(vocab_size=49408, hidden=512, layers=12, heads=8,
                        mlp_dim=2048, max_len=77)
    c.model.proj_dim = 2048
    c.model.dtype = "bfloat16"
    c.batch_size = 1024
    c.total_steps = 20_000
    c.optim.warmup_steps = 1000
    c.eval.probes = ("retrieval", "zeroshot", "gap", "svm", "linear")
    c.eval.transfer = ("voc/2007", "cifar10")
    c.eval.batch_size = 1000
    c.eval.every_steps = 5000
    c.checkpoint_every_steps = 1000
  return c
