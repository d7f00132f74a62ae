"""Towers found by name (models/towers.py): ViT and CLIP's / SigLIP's text
transformers trained, sharded, locked (LiT), checked and summarised like the
ResNet and BERT."""
import jax
import numpy as np
import pytest

from cliplite_jax import config_io, objectives, validation
from cliplite_jax.models import cliplite, towers
from cliplite_jax.training import (optim, parallel, state as state_lib, summary,
                                   train)
from conftest import with_towers
from test_train import _random_batch, _reference_outputs


@pytest.mark.parametrize("image,text", [("vit", "clip"), ("vit", "siglip"),
                                        ("resnet", "clip")])
def test_each_tower_pair_builds_and_validates(tiny, image, text):
  config = with_towers(tiny, image, text)
  validation.check_train(config, 4)
  model = cliplite.build(config)
  assert isinstance(model.image_encoder,
                    type(towers.IMAGE_TOWERS[image].build(
                        config.model.image, np.float32, False)))
  shapes = jax.eval_shape(lambda: state_lib.create_train_state(
      config, model, optim.build(config), jax.random.key(0)))
  image_params = shapes.params.fast["image_encoder"] if hasattr(
      shapes.params, "fast") else shapes.params["image_encoder"]
  if image == "vit":  # a class token, 16 patches + 1 positions, 2 blocks
    assert image_params["pos_embed"].shape == (1, 17, 32)
    assert {"block_0", "block_1", "ln_pre", "ln_post"} <= set(image_params)


def test_vit_and_clip_text_step_on_four_devices_with_fsdp_is_the_whole_batch(
    tiny):
  """InfoNCE sees the global batch: the 4-device step (parameters split over
  fsdp 2) gives the loss of one unsharded forward pass of all 16 rows, and
  the same update as the data-parallel step."""
  config = with_towers(tiny)
  config.loss.name = "infonce"
  batch = _random_batch(config, np.random.default_rng(3))
  results = {}
  for fsdp in (1, 2):
    config.mesh.fsdp = fsdp
    mesh = parallel.make_mesh(4, fsdp=fsdp)
    model, tx = cliplite.build(config), optim.build(config)
    state = state_lib.init_sharded(config, model, tx, mesh)
    if fsdp == 2:
      split = {jax.tree_util.keystr(path) for path, leaf in
               jax.tree_util.tree_leaves_with_path(state.params)
               if parallel.FSDP in leaf.sharding.spec}
      # The tiny towers' leaves above parallel.MIN_FSDP_SIZE, each split.
      for name in ("image_encoder']['patch_embed']['kernel",
                   "text_encoder']['token_embedding']['embedding"):
        assert any(name in path for path in split), (name, split)
      expected = objectives.OBJECTIVES["infonce"].fn(
          _reference_outputs(model, state, batch), config.loss)[1]
    state, metrics = train.make_train_step(config, model, tx, mesh)(
        state, parallel.shard_batch(batch, mesh))
    results[fsdp] = jax.device_get((state.params, metrics))
  for key in ("loss/infonce", "loss/total"):
    np.testing.assert_allclose(results[2][1][key], expected[key], rtol=2e-5,
                               atol=2e-6)
    np.testing.assert_allclose(results[2][1][key], results[1][1][key],
                               rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-7),
               results[2][0], results[1][0])


def _opt_state_size(state) -> int:
  return sum(leaf.size for leaf in jax.tree.leaves(state.opt_state))


@pytest.mark.parametrize("image,text,locked", [
    ("vit", "clip", "image"), ("resnet", "bert", "text"),
    ("resnet", "clip", "image")])
def test_a_locked_tower_is_bit_identical_and_has_no_optimiser_state(
    tiny, image, text, locked):
  config = with_towers(tiny, image, text)
  config.optim.name = "adamw"  # two moments per trained parameter
  config.optim.lookahead_k = 0
  mesh = parallel.make_mesh(4)
  model, tx = cliplite.build(config), optim.build(config)
  # The unlocked state's shapes are all its optimiser state's size needs.
  free_state = state_lib.abstract_state(config, model, tx, mesh)
  config.model[locked].locked = True
  model, tx = cliplite.build(config), optim.build(config)
  state = state_lib.init_sharded(config, model, tx, mesh)
  tower = f"{locked}_encoder"
  other = "text_encoder" if locked == "image" else "image_encoder"
  before = jax.device_get((state.params[tower], state.batch_stats))
  other_before = jax.device_get(state.params[other])
  tower_size = sum(x.size for x in jax.tree.leaves(before[0]))
  assert _opt_state_size(free_state) - _opt_state_size(state) == (
      2 * tower_size)
  step = train.make_train_step(config, model, tx, mesh)
  rng = np.random.default_rng(0)
  for _ in range(2):
    state, metrics = step(state, parallel.shard_batch(
        _random_batch(config, rng), mesh))
  after = jax.device_get((state.params[tower], state.batch_stats))
  jax.tree.map(np.testing.assert_array_equal, after[0], before[0])
  if tower in before[1]:  # a locked ResNet runs on its running statistics
    jax.tree.map(np.testing.assert_array_equal, after[1][tower],
                 before[1][tower])
  # The other tower trains.
  assert not all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(jax.device_get(state.params[other])),
      jax.tree.leaves(other_before)))
  counts = summary.parameter_counts(config, state.params)
  assert counts[locked]["trainable"] == 0
  line = summary._model_line(config, counts)
  assert f"{tower_size / 1e6:.2f}M, locked" in line or (
      f"{tower_size}, locked" in line), line


def test_a_switched_tower_name_keeps_the_old_fields_and_is_one_line(tiny):
  tiny.model.image.name = "vit"  # the ResNet's depth, width, im2col stay
  with pytest.raises(config_io.UserError,
                     match=r"model.image has fields the vit tower does not "
                           r"take: .*image=vit"):
    validation.check_train(tiny, 4)


@pytest.mark.parametrize("section,field,value,needle", [
    ("image", "name", "convnext", "model.image.name='convnext' must be one of"),
    ("image", "variant", "Q/16", "unknown ViT variant 'Q/16'"),
    ("image", "variant", "Ti/5", "a multiple of the ViT patch 5"),
    ("image", "pool", "cls", "model.image.pool='cls' must be one of"),
    ("image", "heads", 5, "a divisor of the width 32"),
    ("text", "pooling", "mean", "model.text.pooling='mean' must be one of"),
    ("text", "act", "relu", "model.text.act='relu' must be one of"),
])
def test_bad_tower_fields_are_named(tiny, section, field, value, needle):
  config = with_towers(tiny)
  config.model[section][field] = value
  with pytest.raises(config_io.UserError, match=needle.replace("(", r"\(")):
    validation.check_train(config, 4)


def test_configs_pick_towers_by_argument():
  from configs import default, vit_demo
  c = vit_demo.get_config()
  assert (c.model.image.name, c.model.text.name) == ("vit", "clip")
  assert c.data.tokenizer == "bpe" and c.optim.name == "adamw"
  c = default.get_config("text=siglip")
  assert (c.model.image.name, c.model.text.name) == ("resnet", "siglip")
  with pytest.raises(config_io.UserError, match="image='vgg'"):
    default.get_config("image=vgg")
