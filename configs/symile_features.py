r"""Symile on a feature set: modalities precomputed by frozen encoders plus
raw text, as Symile-M3 (Saporta et al., NeurIPS 2024, §5.2) trains on
Whisper audio features, CLIP image features and text.

The set is a directory of `.npy`/`.txt` files or `.parquet` tables, one per
split (docs/objectives.md, "Feature sets"; `cliplite_jax/data/feature_sets.py`).
Each vector modality gets one affine map to the shared width (Symile-M3's
linear head on the frozen features), the text modality a small BERT trained
from scratch on a WordPiece vocabulary of the training texts (Symile-M3
fine-tunes XLM-RoBERTa's embeddings and first layer; start it from a
pretrained tokenizer with `--config.data.tokenizer=PATH`).

The argument (any combination):
  :data=DIR                     the feature set (required)
  :vectors=NAME:DIM+NAME:DIM    its vector modalities and widths (default
                                Symile-M3's audio:1280+image:1024:
                                Whisper-large-v3, CLIP ViT-L/14)
  :text=NAME                    its text modality ("" for none; default text)
  :loss=symile|symile_lite|pairwise_infonce
  :fill=zeros|indicator         missing values as they are, or Symile's
                                missingness indicator (a learned embedding
                                per vector modality, [MISSING] for text)
  :steps=N                      training steps (default 10,000)
  :batch=B                      global batch (default 256)
  :tiny=True                    a 1-layer 32-wide text tower (tests, demos)

Usage:
  python -m cliplite_jax.main \
      --config=configs/symile_features.py:data=/data/symile_m3,fill=indicator \
      --workdir=/tmp/symile_m3
"""
import ml_collections

from cliplite_jax import config_io


def _vectors(spec: str) -> dict[str, int]:
  """"a:5+b:7" → {"a": 5, "b": 7}."""
  out = {}
  for item in filter(None, spec.split("+")):
    name, _, dim = item.partition(":")
    if not name or not dim.isdigit() or int(dim) < 1 or name in out:
      raise config_io.UserError(
          f"vectors: expected NAME:DIM+NAME:DIM with distinct names and "
          f"widths ≥ 1, got {spec!r}")
    out[name] = int(dim)
  return out


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Symile on the feature set of `arg` (see above)."""
  args = config_io.parse_arg(arg, data="", vectors="audio:1280+image:1024",
                             text="text", loss="symile", fill="zeros",
                             steps=10000, batch=256, tiny=False)
  if not args.data:
    raise config_io.UserError(
        "configs/symile_features.py needs data=DIR, the feature set "
        "(docs/objectives.md, \"Feature sets\")")
  if args.fill not in ("zeros", "indicator"):
    raise config_io.UserError(f"fill must be zeros or indicator; got "
                              f"{args.fill}")
  vectors = _vectors(args.vectors)
  if args.text in vectors:
    raise config_io.UserError(f"text={args.text!r} is also in vectors")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = args.steps
  c.batch_size = args.batch
  c.accum_steps = 1
  c.mesh = dict(fsdp=1)
  c.cpu_compiler_options = {}

  c.model = ml_collections.ConfigDict()
  c.model.modalities = tuple(vectors) + ((args.text,) if args.text else ())
  towers = {m: dict(name="mlp", widths=(), input_dim=d)
            for m, d in vectors.items()}
  if args.text:
    width = 32 if args.tiny else 256
    towers[args.text] = dict(
        name="bert", vocab_size=1000 if args.tiny else 30522, hidden=width,
        layers=1 if args.tiny else 4, heads=2 if args.tiny else 4,
        mlp_dim=4 * width, max_len=16 if args.tiny else 64, pooling="mean",
        dropout=0.0 if args.tiny else 0.1, train_last_layers=-1)
  c.model.towers = towers
  c.model.embed_dim = 16 if args.tiny else 256
  c.model.init_log_scale = 2.659  # log(1 / 0.07), CLIP's
  c.model.missing = args.fill

  c.loss = ml_collections.ConfigDict()
  c.loss.name = args.loss
  c.loss.symile_sampling = "n"

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"
  c.optim.momentum = 0.9  # SGD only
  c.optim.weight_decay = 0.01
  c.optim.b1, c.optim.b2 = 0.9, 0.999
  c.optim.lookahead_k = 0
  c.optim.lookahead_alpha = 0.5
  c.optim.lr = dict(other=1e-3)
  c.optim.group_regex = {}
  c.optim.warmup_steps = 0
  c.optim.clip_norm = 1.0

  c.data = ml_collections.ConfigDict()
  c.data.name = "features:" + args.data
  c.data.data_dir = ""
  c.data.train_split = "train"
  c.data.fraction = 1.0
  c.data.fraction_seed = 0
  c.data.num_threads = 2
  c.data.num_workers = 0
  # The text modality's tokenizer: a WordPiece vocabulary trained on the
  # training texts ("wordpiece"), or a local tokenizer's path.
  c.data.tokenizer = "wordpiece"
  c.data.max_tokens = 16 if args.tiny else 64

  c.eval = ml_collections.ConfigDict()
  c.eval.split = "test"
  c.eval.fit_split = "train"
  c.eval.probes = ("zeroshot",)  # each modality from the others
  c.eval.candidates = 0
  c.eval.bootstrap = 0
  c.eval.transfer = ()
  c.eval.batch_size = 256
  c.eval.every_steps = 0

  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 2
  c.keep_every_steps = 0
  return c
