"""The embedded CPU demo: CLIP-Lite on `shapes_captions` at 64 px.

A narrow ResNet-18 (width 1/4) and a 2-layer BERT (width 128), 256-wide
projection blocks, global batch 64, 1000 steps: it trains and evaluates in
about 3 minutes on 2 CPU cores. Every hyperparameter of the paper is a field here;
where the demo departs from the paper's value (COCO, 250k steps) the paper's
value is written beside it.

The argument picks the towers (models/towers.py), each with demo-sized
fields:
  :image=resnet|vit   a ResNet-18 ×1/4 (default) or a 4-block ViT-Ti/16
  :text=bert|clip|siglip  BERT (default), CLIP's causal text transformer
                      (end-of-text pooling) or SigLIP's (last token, head)
configs/vit_demo.py is the demo with image=vit,text=clip and its optimiser.

Usage:
  python -m cliplite_jax.main --config=configs/default.py --workdir=/tmp/demo
"""
import ml_collections

from cliplite_jax import config_io
from cliplite_jax.probes import fewshot


def image_tower(name: str) -> dict:
  """The demo's `model.image` section for tower `name`."""
  if name == "resnet":
    return dict(
        name="resnet",
        depth=18,  # paper: 50
        width=0.25,  # paper: 1.0
        # 3×3 convs on the last stages' small maps as patch matrix products
        # and the 7×7/2 stem's forward on space-to-depth input: faster on
        # CPU (BENCHMARKS.md); False on GPU/TPU, where XLA's convs are the
        # fast path.
        im2col=True,
        locked=False)  # LiT: no update, no decay, no optimiser state
  if name == "vit":
    return dict(
        name="vit",
        variant="Ti/16",  # SIZE/PATCH: Ti, S, B, L, So400m; any patch
        # > 0 overrides the variant's (0: the variant's); 4 of Ti's 12
        # blocks keep the demo's minutes.
        width=0, depth=4, heads=0, mlp_dim=0,
        # "token": the class token after ln_post (OpenAI / open_clip);
        # "gap": mean of the patch tokens; "map": SigLIP's attention pooling.
        pool="token",
        class_token=True,
        posemb="learn",  # or "sincos2d" (fixed, big_vision's)
        pre_norm=True,  # CLIP's ln_pre after the embeddings
        act="quick_gelu",  # CLIP's; "gelu" (exact), "gelu_tanh" (SigLIP)
        layer_norm_eps=1e-5,
        scan=False,  # one scanned block instead of depth unrolled ones
        posemb_grid=0,  # learned grid n×n; 0: the image's (no resizing)
        # A released model to take this tower from (docs/pretrained.md).
        init_from="",
        locked=False)
  raise config_io.UserError(f"config argument image={name!r}: expected "
                            f"resnet or vit")


def text_tower(name: str) -> dict:
  """The demo's `model.text` section for tower `name`."""
  shape = dict(
      vocab_size=512,  # paper: 30522 (BERT uncased); here the trained WordPiece
      hidden=128,  # paper: 768
      layers=2,  # paper: 12 (ablations 2/4/6)
      heads=2,  # paper: 12
      mlp_dim=256,  # paper: 3072
      max_len=32,  # paper: 512 position embeddings; captions use 30 tokens
      # -1 trains the whole text tower; 0 freezes it; N trains only its last
      # N layers and what follows them (frozen parameters get no update, no
      # decay).
      train_last_layers=-1,
      locked=False)  # LiT: the whole tower frozen, in inference mode
  if name == "bert":
    return dict(
        name="bert", **shape,
        # paper: "pooler" (tanh dense on [CLS]); its mean-pooling variant
        # lets a 1000-step demo bind shape words to shapes (pooler stays at
        # chance).
        pooling="mean",
        dropout=0.1,
        # A local Hugging Face BERT-architecture directory (config.json +
        # model.safetensors or pytorch_model.bin, tokenizer files) to start
        # the text tower from; its architecture and tokenizer replace the
        # fields above. Empty: random init.
        pretrained="")
  if name in ("clip", "siglip"):
    clip = name == "clip"
    return dict(
        name=name, **shape,
        # CLIP: features at the end-of-text token (the last real one),
        # causal attention; SigLIP: the last position, bidirectional, all
        # positions attended (its tokenizer pads to a fixed length).
        pooling="eot" if clip else "last",
        causal=clip,
        mask_padding=clip,
        act="quick_gelu" if clip else "gelu_tanh",
        layer_norm_eps=1e-5 if clip else 1e-6,
        projection=0 if clip else shape["hidden"],  # SigLIP's head Dense
        dropout=0.0,
        init_from="")  # a released model to take this tower from
  raise config_io.UserError(f"config argument text={name!r}: expected bert, "
                            f"clip or siglip")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The demo config, with the towers `arg` names (see above)."""
  args = config_io.parse_arg(arg, image="resnet", text="bert")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1000  # paper: 250_000
  c.batch_size = 64  # global; paper: 1024 (128 per accelerator on 8)
  # Micro-batches per step: each device's rows are split into this many, the
  # loss (and the JSD roll) is taken per micro-batch and the gradients are
  # averaged, so a device needs activation memory for B / devices / this.
  c.accum_steps = 1
  # Devices along the mesh's `fsdp` axis: parameters and optimizer state are
  # split over them (1: replicated everywhere, plain data parallelism).
  c.mesh = dict(fsdp=1)
  # XLA options for the jitted train step and encoders when running on CPU
  # (ignored on GPU/TPU). XLA's CPU default hands every matrix product and
  # some conv gradients to YNNPACK, slow on this model's small shapes;
  # keeping it to reduction fusions ran the demo's step 0-12% faster
  # (BENCHMARKS.md, "XLA CPU options"). The step's temporaries in blocks of
  # at most 16 MiB, which malloc keeps between steps (cliplite_jax/
  # host_memory.py), instead of one 100+ MiB block the kernel zero-fills at
  # every step (-1: one block, XLA's default). {} keeps XLA's defaults.
  c.cpu_compiler_options = dict(
      xla_cpu_experimental_ynn_fusion_type="LIBRARY_FUSION_TYPE_REDUCE",
      xla_multiheap_size_constraint_per_heap=16 << 20)

  c.model = ml_collections.ConfigDict()
  # "bfloat16": compute in bf16; parameters, optimizer state, the critic, the
  # losses and the prior discriminators stay float32. paper: mixed precision.
  c.model.dtype = "float32"
  c.model.remat = False  # recompute ResNet blocks and BERT layers in backward
  c.model.image = image_tower(args.image)
  c.model.text = text_tower(args.text)
  c.model.proj_dim = 256  # paper: 2048
  # "milinear": CLIP-Lite's MILinearBlock heads; "linear": CLIP's bias-free
  # projection; "identity": none (SigLIP); "released": model.init_from's.
  c.model.head = "milinear"
  # A released CLIP / SigLIP model (local path: a transformers CLIPModel or
  # SiglipModel directory, an open_clip directory or checkpoint file): both
  # towers, the logit scale and SigLIP's bias start from it; its
  # architecture, tokenizer and pixel statistics replace the config's
  # (docs/pretrained.md). init_arch: a bare open_clip file's model config.
  c.model.init_from = ""
  c.model.init_arch = ""
  # Per-channel pixel statistics images are normalised with (a released
  # model's replace them).
  c.model.pixel_mean = (0.485, 0.456, 0.406)  # ImageNet's
  c.model.pixel_std = (0.229, 0.224, 0.225)
  c.model.init_temperature = 0.07  # t = log(1/0.07), unclamped
  c.model.prior_widths = (1000, 200)  # paper: (1000, 200)

  c.loss = ml_collections.ConfigDict()
  # "jsd" (CLIP-Lite), "infonce" (CLIP), "sigmoid" (SigLIP), "nclip",
  # "xclip" (InfoNCE + nCLIP), "jsd_nclip" (CLIP-Lite + nCLIP);
  # docs/objectives.md.
  c.loss.name = "jsd"
  c.loss.prior_weight = 0.1  # w
  c.loss.prior_img = True
  c.loss.prior_txt = True
  c.loss.init_logit_bias = -10.0  # SigLIP only
  # JSD's critic T(x, y): "dot", the paper's <x/|x|, y/|y|> exp(t) on the
  # heads' embeddings; "concat", the reference code's MLP on the towers'
  # concatenated features (512, 512, 1), which trains no embedding;
  # "condot" / "dotcon": concat for the image–text term and dot for the two
  # below, or the reverse (docs/objectives.md).
  c.loss.critic = "dot"
  # The reference code's extra JSD terms, weighted (it adds them with 1):
  # two augmented views of each image, two captions of it (0: off).
  c.loss.image_image = 0.0
  c.loss.text_text = 0.0
  # JSD's negative: "rolled" (the next pair's caption in the device's
  # shard, the paper's) or "clusters" (the reference code's hard negatives:
  # a caption of the same cluster of a k-means of the caption embeddings,
  # refreshed every every_steps, from start_step on; objectives/clusters.py).
  c.loss.negatives = "rolled"
  c.loss.clusters = dict(k=8, start_step=1, every_steps=100, iterations=10)
  # How infonce, sigmoid and xclip see the global batch: "all" gathers every
  # embedding onto every device; "ring" passes text shards round the
  # devices instead (flat memory per device; docs/objectives.md).
  c.loss.gather = "all"
  # nCLIP's terms (nclip, xclip, jsd_nclip). Its code is unpublished: the
  # temperatures and ME-MAX weight are DINO's / MSN's values.
  c.loss.nclip = dict(
      prototypes=256,  # K, shared by both modalities
      student_temperature=0.1,  # the predicted assignment's
      teacher_temperature=0.04,  # the sharpened stop-gradient target's
      me_max_weight=1.0,  # log K − H(mean assignment), against collapse
      weight=1.0)  # of the nCLIP loss added to InfoNCE / CLIP-Lite's

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "sgd"
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  c.optim.b1, c.optim.b2 = 0.9, 0.999  # AdamW only
  c.optim.lookahead_k = 5  # 0 disables Lookahead
  c.optim.lookahead_alpha = 0.5
  # > 0 keeps an exponential moving average of the weights (and BatchNorm
  # statistics), updated after every step and used instead of the weights
  # wherever the trained model is used: evaluation, embed, export.
  c.optim.ema_decay = 0.0
  # Peak learning rate per parameter group; paper: 0.2 / 0.001 / 0.001. The
  # demo raises text and heads so a 1000-step run learns the captions.
  c.optim.lr = dict(image=0.2, text=0.1, other=0.1)
  c.optim.group_regex = dict(image="^image_encoder/", text="^text_encoder/")
  c.optim.warmup_steps = 100  # paper: 10_000
  c.optim.clip_norm = 10.0

  c.data = ml_collections.ConfigDict()
  c.data.name = "shapes_captions"
  c.data.data_dir = ""  # "" = TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR)
  c.data.train_split = "train"  # COCO: "train+restval"
  c.data.fraction = 1.0  # seeded subset of the training images; paper: 0.1-1
  c.data.fraction_seed = 0
  c.data.image_size = 64  # paper: 224
  # paper: (0.2, 1.0); tighter here so crops rarely cut away a captioned shape
  c.data.crop_scale = (0.7, 1.0)
  c.data.crop_ratio = (3 / 4, 4 / 3)
  # (brightness, contrast, saturation, hue); paper: (0.4, 0.4, 0.4, 0.1) with
  # probability 0.8. Off here: the shapes' captions name their colours.
  c.data.color_jitter = (0.4, 0.4, 0.4, 0.1)
  c.data.color_jitter_prob = 0.0
  # Colour jitter in the jitted train step (torchvision's float-tensor
  # formulas; the factors drawn on the host, per example), so it costs the
  # host nothing; False: on the host with PIL (torchvision's PIL backend,
  # uint8 after each adjustment). Within a grey level or two of each other
  # (tests/test_augment.py).
  c.data.color_jitter_on_device = True
  c.data.flip = True  # horizontal flip that swaps "left" and "right"
  # The crop's resize: "pil", PIL's antialiased bilinear (torchvision's), or
  # "opencv", a triangle prefilter and bilinear sampling in OpenCV: 3–6×
  # faster, within 2 grey levels of PIL on average (the [opencv] extra).
  c.data.resize = "pil"
  c.data.max_words = 30
  c.data.max_tokens = 30
  # "wordpiece": a vocabulary of model.text.vocab_size trained on the training
  # captions; "bpe": CLIP's byte-level BPE, trained the same way (the CLIP
  # and SigLIP text towers' default); or a local directory/file with an HF
  # tokenizer.json or a BERT vocab.txt (e.g. bert-base-uncased, paper: 30522
  # tokens).
  c.data.tokenizer = "wordpiece" if args.text == "bert" else "bpe"
  # Several caption sets mixed by weight, "NAME=WEIGHT,NAME=WEIGHT" (TFDS
  # names or prepared sets' paths; data.name, the set evaluated, among them);
  # "": data.name alone.
  c.data.mixture = ""
  c.data.rewrites = ""  # LaCLIP: JSON {image id: [rewritten captions]}; off
  # Caption kinds drawn by probability, "captions=0.5,rewrites=0.5": the
  # set's captions, data.rewrites' and a prepared set's --caption_fields
  # (a field, then one of its captions); "": uniform over every caption.
  c.data.caption_fields = ""
  # LaCLIP's rule: a drawn rewrite of fewer words is replaced by an original
  # caption (0: every rewrite is used as it is).
  c.data.rewrite_min_words = 2
  c.data.num_threads = 2  # grain read/transform threads per process
  c.data.num_workers = 0  # grain worker processes (0: threads only)

  c.eval = ml_collections.ConfigDict()
  c.eval.split = "test"  # scored split of the training dataset
  c.eval.fit_split = "train"  # its split the SVM and linear probes learn on
  c.eval.probes = ("retrieval", "zeroshot", "gap", "svm", "linear")
  # More datasets scored with the probes they support, each on its own
  # splits (see cliplite_jax/data/sources.py), e.g. ("voc/2007", "cifar10").
  c.eval.transfer = ()
  # Linear probe on frozen pooled image features (shapes: the largest
  # object's colour); the paper's ImageNet protocol: SGD momentum 0.9, no
  # weight decay, cosine schedule, batch 256, ~100 epochs.
  c.eval.linear = dict(epochs=30, batch_size=256,
                       learning_rate=0.1)
  # Few-shot probe ("fewshot" in eval.probes): big_vision's fewshot_lsr,
  # closed-form ridge regression on k pooled features per class of the fit
  # split, mean ± sample std over seeded draws.
  c.eval.fewshot = dict(fewshot.DEFAULTS)
  # A benchmark suite scored beside the sets above: "clip_benchmark" (CLIP's
  # zero-shot sets and ImageNet's variants) or "quick"; the sets not
  # prepared under data.data_dir are listed and skipped (docs/evaluation.md).
  c.eval.suite = ""
  c.eval.batch_size = 250
  c.eval.every_steps = 0  # 0: only at the end of training

  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3  # the latest checkpoints kept (≥ 1)
  # Also keep every checkpoint whose step is a multiple of this (0: off).
  c.keep_every_steps = 0
  return c
