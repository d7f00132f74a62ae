r"""Symile's synthetic higher-order experiment (Saporta et al., NeurIPS 2024,
§5.1) on the embedded `symile_xor` set: three 5-bit modalities a, b, c with
c = a XOR b for a fraction p of the examples (else c = a).

At p = 1 no pair of modalities shares information (each is uniform given
any one other), but any two determine the third: Symile's multilinear
critic predicts c from (a, b) near perfectly, while CLIP trained on every
pair stays at chance. The training values are those of Symile's example
script (`examples/binary_xor.py` in rajesh-lab/symile): one affine encoder
per modality (5 → 16, then L2-normalised), learnable log-scale from −0.3,
AdamW lr 0.1, weight decay 0.01, batch 1000, 10,000 training examples,
O(N) negatives. That script trains 50 epochs at a constant rate and keeps
the best validation checkpoint; here 100 epochs with the rate decaying by
cosine, and the last step is scored (docs/objectives.md).

The argument picks the variant (any combination):
  :p=0|0.25|0.5|0.75|1          the XOR probability (default 1)
  :loss=symile|symile_lite|pairwise_infonce
                                the objective (default symile)
  :sampling=n|n_squared         Symile's negatives: N − 1 per positive, or
                                every combination (N² for three modalities;
                                meant for small batches)
  :missing=0|0.25|0.5           each modality of a training example missing
                                with this probability (p = 1 only; Symile's
                                binary_xor_missing); its bits are zeros
  :fill=zeros|indicator         a missing modality goes in as its zeros, or
                                with Symile's missingness indicator (a
                                learned embedding of the flag concatenated)

Usage (about 1 minute on 2 CPU cores):
  python -m cliplite_jax.main --config=configs/symile_xor.py:p=1 \
      --workdir=/tmp/symile_xor
"""
import ml_collections

from cliplite_jax import config_io

_PERCENTS = (0, 25, 50, 75, 100)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The XOR experiment for `arg` (see above)."""
  args = config_io.parse_arg(arg, p=1.0, loss="symile", sampling="n",
                             missing=0.0, fill="zeros")
  percent = round(args.p * 100)
  if percent not in _PERCENTS or abs(args.p * 100 - percent) > 1e-9:
    raise config_io.UserError(f"p must be one of 0, 0.25, 0.5, 0.75, 1; "
                              f"got {args.p}")
  if args.missing not in (0, 0.25, 0.5) or (args.missing and percent != 100):
    raise config_io.UserError(f"missing must be 0, 0.25 or 0.5 (with p=1); "
                              f"got missing={args.missing}, p={args.p}")
  if args.fill not in ("zeros", "indicator"):
    raise config_io.UserError(f"fill must be zeros or indicator; got "
                              f"{args.fill}")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1000  # 100 epochs of 10,000 examples
  c.batch_size = 1000
  c.accum_steps = 1
  c.mesh = dict(fsdp=1)
  c.cpu_compiler_options = {}

  c.model = ml_collections.ConfigDict()
  c.model.modalities = ("a", "b", "c")
  # widths (): the head alone, one affine map input_dim → embed_dim.
  c.model.towers = {m: dict(name="mlp", widths=(), input_dim=5)
                    for m in c.model.modalities}
  c.model.embed_dim = 16
  c.model.init_log_scale = -0.3
  # A missing modality's input: its zeros ("zeros"), or with Symile's
  # missingness indicator ("indicator").
  c.model.missing = args.fill

  c.loss = ml_collections.ConfigDict()
  # "symile", "symile_lite" (JSD on the MIP, one rolled negative) or
  # "pairwise_infonce" (CLIP on every pair, summed).
  c.loss.name = args.loss
  c.loss.symile_sampling = args.sampling  # "n" or "n_squared"

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"
  c.optim.momentum = 0.9  # SGD only
  c.optim.weight_decay = 0.01
  c.optim.b1, c.optim.b2 = 0.9, 0.999
  c.optim.lookahead_k = 0
  c.optim.lookahead_alpha = 0.5
  c.optim.lr = dict(other=0.1)
  c.optim.group_regex = {}
  c.optim.warmup_steps = 0
  c.optim.clip_norm = 1e6  # Symile clips nothing

  c.data = ml_collections.ConfigDict()
  c.data.name = (f"symile_xor/p100_m{round(args.missing * 100)}"
                 if args.missing else f"symile_xor/p{percent:03d}")
  c.data.data_dir = ""
  c.data.train_split = "train"
  c.data.fraction = 1.0
  c.data.fraction_seed = 0
  c.data.num_threads = 2
  c.data.num_workers = 0

  c.eval = ml_collections.ConfigDict()
  c.eval.split = "test"
  c.eval.fit_split = "train"
  c.eval.probes = ("zeroshot",)  # each modality from the other two
  # Among every distinct value (0), or the true one and N − 1 drawn at
  # random (Symile-MIMIC: 10); R > 0: a 95 % bootstrap interval over R
  # resamples of the test queries (Symile's bootstrap_n: 10).
  c.eval.candidates = 0
  c.eval.bootstrap = 0
  c.eval.transfer = ()
  c.eval.batch_size = 1000
  c.eval.every_steps = 0

  c.log_every_steps = 100
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 2
  c.keep_every_steps = 0
  return c
