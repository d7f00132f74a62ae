"""Every config of the paper's grid builds, and its model initialises."""
import re

import jax
import jax.numpy as jnp
import pytest

from cliplite_jax import config_io

from cliplite_jax import validation
from cliplite_jax.models import cliplite, resnet, towers
from cliplite_jax.training import optim, parallel, state as state_lib
from conftest import REPO

GRID = ([("coco_rn50_bert.py", "")]
        + [("coco_rn50_bert.py", f"batch={b}") for b in (64, 128, 256, 512)]
        + [("coco_rn50_bert.py", f"text_layers={n}") for n in (2, 4, 6)]
        + [("coco_rn50_bert.py", f"backbone={b}") for b in ("rn18", "rn101", "rn152")]
        + [("coco_rn50_bert.py", f"fraction={f}") for f in (0.1, 0.25, 0.5, 0.75)]
        + [("clip_baseline.py", ""), ("siglip_baseline.py", "batch=256"),
           ("nclip_baseline.py", ""), ("xclip_baseline.py", "batch=256"),
           ("clip_baseline.py", "data=shapes"),
           ("nclip_baseline.py", "data=shapes"), ("default.py", ""),
           ("vit_demo.py", ""), ("vit_demo.py", "text=siglip"),
           ("default.py", "image=vit,text=siglip"),
           ("vit_demo.py", "image=resnet"), ("coco_vitb16_clip.py", ""),
           ("coco_vitb16_clip.py", "loss=infonce")])


def _load(name, arg):
  return config_io.load_file(f"{REPO}/configs/{name}" + (f":{arg}" if arg else ""))


@pytest.mark.parametrize("name,arg", GRID)
def test_config_builds_and_its_state_initialises_abstractly(name, arg):
  c = _load(name, arg)
  # Every field a run reads is there (the config is locked: a missing one
  # could not be set from the command line), and in its domain.
  assert c.keep_every_steps == 0
  validation.check_train(c, num_devices=1)
  model = cliplite.build(c)
  state = state_lib.abstract_state(c, model, optim.build(c),
                                   parallel.make_mesh(1))
  params = state.model_params
  if c.model.image.name == "resnet":
    # ResNet features: 512 (basic blocks) or 2048 (bottlenecks) × width.
    width = int((2048 if c.model.image.depth >= 50 else 512)
                * c.model.image.width)
  else:  # the ViT's width: its variant's unless overridden
    width = c.model.image.width or towers.vit_shape(c.model.image)["width"]
  assert params["image_head"]["shortcut"]["kernel"].shape == (
      width, c.model.proj_dim)
  assert params["text_head"]["shortcut"]["kernel"].shape == (
      c.model.text.get("projection") or c.model.text.hidden, c.model.proj_dim)
  layers = [k for k in params["text_encoder"] if k.startswith("layer_")]
  assert len(layers) == c.model.text.layers


def test_grid_values_follow_the_paper():
  head = _load("coco_rn50_bert.py", "")
  assert (head.batch_size, head.total_steps, head.optim.warmup_steps) == (
      1024, 250_000, 10_000)
  assert dict(head.optim.lr) == {"image": 0.2, "text": 0.001, "other": 0.001}
  assert head.model.image.depth == 50 and head.data.image_size == 224
  small = _load("coco_rn50_bert.py", "batch=128")
  assert (small.batch_size, small.total_steps, small.model.text.layers,
          small.data.flip) == (128, 200_000, 2, True)
  assert not head.data.flip
  deep = _load("coco_rn50_bert.py", "backbone=rn101")
  assert (deep.batch_size, deep.total_steps, deep.model.text.layers,
          deep.model.image.depth, deep.data.flip) == (512, 200_000, 2, 101,
                                                      True)
  layers = _load("coco_rn50_bert.py", "text_layers=4")
  assert (layers.batch_size, layers.total_steps,
          layers.model.text.layers) == (1024, 250_000, 4)
  frac = _load("coco_rn50_bert.py", "fraction=0.25")
  assert (frac.data.fraction, frac.total_steps) == (0.25, 62_500)
  tenth = _load("coco_rn50_bert.py", "fraction=0.1")  # the reference's 20k
  assert (tenth.total_steps, tenth.optim.warmup_steps) == (20_000, 1_000)
  assert _load("clip_baseline.py", "").loss.name == "infonce"
  assert _load("siglip_baseline.py", "").loss.name == "sigmoid"
  for name, loss in (("nclip_baseline.py", "nclip"),
                     ("xclip_baseline.py", "xclip")):
    coco, shapes = _load(name, ""), _load(name, "data=shapes")
    assert (coco.loss.name, coco.data.name) == (loss, "coco_captions")
    assert (shapes.loss.name, shapes.data.name) == (loss, "shapes_captions")
    assert coco.loss.nclip.prototypes == 4096
    assert not (coco.loss.prior_img or shapes.loss.prior_txt)
  # The shapes baselines differ from the demo in the objective alone.
  demo = _load("default.py", "").to_dict()
  for name in ("clip_baseline.py", "nclip_baseline.py", "xclip_baseline.py"):
    other = _load(name, "data=shapes").to_dict()
    assert {k for k in demo if demo[k] != other[k]} == {"loss"}, name


@pytest.mark.parametrize("arg", ["", "p=0", "p=0.5,loss=pairwise_infonce",
                                 "loss=symile_lite,sampling=n_squared",
                                 "missing=0.25", "missing=0.5,fill=indicator"])
def test_symile_xor_configs_build(arg):
  c = _load("symile_xor.py", arg)
  validation.check_train(c, num_devices=1)
  model = state_lib.build_model(c)
  state = state_lib.abstract_state(c, model, optim.build(c),
                                   parallel.make_mesh(1))
  args = dict(kv.split("=") for kv in arg.split(",") if kv)
  # The indicator's learned embedding [2, 5] goes in beside the 5 bits.
  indicator = args.get("fill") == "indicator"
  assert state.model_params["c_head"]["kernel"].shape == (
      10 if indicator else 5, 16)
  assert ("c_missing_embedding" in state.model_params) == indicator
  p, missing = float(args.get("p", 1)), float(args.get("missing", 0))
  assert c.data.name == (f"symile_xor/p100_m{round(missing * 100)}"
                         if missing else f"symile_xor/p{round(p * 100):03d}")


@pytest.mark.parametrize("name,arg", [("symile_xor.py", "p=0.3"),
                                      ("symile_xor.py", "q=1"),
                                      ("symile_xor.py", "missing=0.3"),
                                      ("symile_xor.py", "missing=0.25,p=0.5"),
                                      ("symile_xor.py", "fill=mean"),
                                      ("nclip_baseline.py",
                                       "data=shapes,batch=256")])
def test_bad_objective_config_arguments(name, arg):
  with pytest.raises(config_io.UserError):
    _load(name, arg)


@pytest.mark.parametrize("arg", ["bach=64", "batch=63", "backbone=vgg", "batch"])
def test_bad_config_argument_is_a_user_error(arg):
  with pytest.raises(config_io.UserError):
    _load("coco_rn50_bert.py", arg)


def _library_fused(options, fn, *shapes) -> bool:
  """Whether XLA:CPU hands `fn`'s one op to YNNPACK under `options`."""
  args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
  hlo = jax.jit(fn, compiler_options=options).lower(*args).compile().as_text()
  return "ynn_fusion" in hlo


def test_coco_config_keeps_convolutions_off_ynnpack_and_products_on_it():
  """XLA's default gives YNNPACK every conv with > 16 channels (slower than
  XLA's own on RN50's shapes); the COCO config's options keep its products."""
  options = parallel.compiler_options(_load("coco_rn50_bert.py", ""))
  conv = lambda x, k: resnet.torch_padded_conv(x, k, (1, 1))  # noqa: E731
  conv_shapes = ((2, 14, 14, 64), (3, 3, 64, 64))
  assert _library_fused(None, conv, *conv_shapes)  # XLA's default
  assert not _library_fused(options, conv, *conv_shapes)
  assert _library_fused(options, jnp.matmul, (64, 96), (96, 128))


@pytest.mark.parametrize("study,args", [
    ("batch", ["batch=64", "batch=128", "batch=256", "batch=512"]),
    ("text_layers", ["text_layers=2", "text_layers=4", "text_layers=6", ""]),
    ("backbone", ["backbone=rn18", "backbone=rn50", "backbone=rn101",
                  "backbone=rn152"]),
    ("fraction", ["fraction=0.1,bert=/m/bert", "fraction=0.25,bert=/m/bert",
                  "fraction=0.5,bert=/m/bert", "fraction=0.75,bert=/m/bert",
                  "bert=/m/bert"])])
def test_the_ablation_launcher_covers_each_study(tmp_path, study, args):
  """launch/coco_ablations.sh, run with launch/gpu_host.sh replaced by an
  echo: each of the study's arguments for CLIP-Lite and CLIP, one workdir
  each, every config loading."""
  import os
  import shutil
  import subprocess
  shutil.copytree(f"{REPO}/launch", tmp_path / "launch")
  (tmp_path / "launch" / "gpu_host.sh").write_text('#!/bin/bash\necho "$@"\n')
  result = subprocess.run(
      ["bash", "launch/coco_ablations.sh", study, str(tmp_path / "runs"), "3"],
      cwd=tmp_path, capture_output=True, text=True,
      env=dict(os.environ, BERT="/m/bert"))
  assert result.returncode == 0, result.stderr
  runs = [line.split() for line in result.stdout.splitlines()
          if not line.startswith("---")]
  want = [(f"--config=configs/{config}.py" + (f":{arg}" if arg else ""),
           "--config.seed=3") for arg in args
          for config in ("coco_rn50_bert", "clip_baseline")]
  assert [(run[0], run[2]) for run in runs] == want
  workdirs = [run[1] for run in runs]
  assert len(set(workdirs)) == len(workdirs)
  assert all("/m/bert" not in w for w in workdirs)
  # A run from a pretrained BERT never shares a workdir with one without.
  assert all(("bert=" in run[0].split(":")[-1]) == w.endswith("bert_seed3")
             for run, w in zip(runs, workdirs) if study == "fraction")
  for config, _, _ in runs:
    name, _, arg = config.removeprefix("--config=configs/").partition(":")
    if "bert=" not in arg:  # a BERT directory is read when the model is built
      _load(name, arg)


def test_the_concat_critic_is_for_jsd_and_the_feature_probes():
  c = _load("default.py", "")
  c.loss.critic = "concat"
  with pytest.raises(config_io.UserError) as error:
    validation.check_train(c, num_devices=1)
  message = str(error.value)
  assert ("loss.critic='concat' must be 'dot' for retrieval, gap, zeroshot: "
          "concat scores image–caption pairs with an MLP on the towers' "
          "features and leaves the embeddings they read untrained") in message
  assert "--config.eval.probes='(\"linear\",\"svm\")'" in message
  assert "\n" not in message
  # evaluate refuses them too, for a concat run's workdir.
  from cliplite_jax.probes import evaluated
  with pytest.raises(config_io.UserError, match="this run's critic is "
                     "'concat', an MLP on the towers' features: the "
                     "embeddings retrieval, gap, zeroshot read were never"):
    evaluated.check_evaluation(c)
  c.eval.probes = ("linear", "svm")
  validation.check_train(c, num_devices=1)
  model = state_lib.build_model(c)
  params = state_lib.abstract_state(c, model, optim.build(c),
                                    parallel.make_mesh(1)).model_params
  # The reference's GlobalDiscriminator on ResNet-18 ×1/4 (128) and BERT
  # (128) features: 256 → 512 → 512 → 1.
  critic = params["cross_critic"]
  assert critic["image_in"]["kernel"].shape == (128, 512)
  assert critic["text_in"]["kernel"].shape == (128, 512)
  assert critic["tail"]["dense0"]["kernel"].shape == (512, 512)
  assert critic["tail"]["logit"]["kernel"].shape == (512, 1)
  c.loss.name = "infonce"
  with pytest.raises(config_io.UserError, match="loss.critic='concat' must "
                     "be off unless loss.name is 'jsd'"):
    validation.check_train(c, num_devices=1)
  c.loss.name, c.loss.critic = "jsd", "mlp"
  with pytest.raises(config_io.UserError, match="loss.critic='mlp' must be"):
    validation.check_train(c, num_devices=1)
  # condot / dotcon pick the critic of the image–image and text–text terms.
  c.loss.critic = "dotcon"
  with pytest.raises(config_io.UserError, match="'dot' when neither loss."
                     "image_image nor loss.text_text is on: 'dotcon' also"):
    validation.check_train(c, num_devices=1)
  c.loss.image_image = 1.0
  c.eval.probes = ("zeroshot", "linear")  # dotcon's image–text critic is dot
  validation.check_train(c, num_devices=1)
  params = state_lib.abstract_state(
      c, state_lib.build_model(c), optim.build(c),
      parallel.make_mesh(1)).model_params
  assert "cross_critic" not in params
  assert params["image_image_critic"]["image_in"]["kernel"].shape == (128, 512)
  c.loss.critic, c.loss.text_text = "condot", 0.5
  c.eval.probes = ("linear",)
  params = state_lib.abstract_state(
      c, state_lib.build_model(c), optim.build(c),
      parallel.make_mesh(1)).model_params
  # condot: concat across, a MILinearBlock per side (and a t) within.
  assert params["cross_critic"]["text_in"]["kernel"].shape == (128, 512)
  assert set(params["text_text_critic"]) == {"block_a", "block_b",
                                             "log_scale"}
  for value in (-1.0, float("inf")):
    c.loss.image_image = value
    with pytest.raises(config_io.UserError, match=f"loss.image_image={value}"):
      validation.check_train(c, num_devices=1)
  c.loss.image_image, c.model.image.locked = 1.0, True
  with pytest.raises(config_io.UserError, match="0 with a locked image tower"):
    validation.check_train(c, num_devices=1)


@pytest.mark.parametrize("field,value,message", [
    ("candidates", 1, "eval.candidates=1 must be 0 (every distinct value) or "
     "a number of candidates ≥ 2"),
    ("candidates", -3, "eval.candidates=-3 must be 0"),
    ("bootstrap", 5, "eval.bootstrap=5 must be 0 (no interval) or a number "
     "of resamples ≥ 10"),
    ("bootstrap", -1, "eval.bootstrap=-1 must be 0")])
def test_symiles_evaluation_options_are_checked_for_evaluate_too(
    field, value, message):
  c = _load("symile_xor.py", "")
  c.eval[field] = value
  for check in (validation.check_eval,
                lambda c: validation.check_train(c, num_devices=1)):
    with pytest.raises(config_io.UserError, match=re.escape(message)):
      check(c)
