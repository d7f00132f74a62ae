"""ViT image tower: parity with transformers' CLIPVisionModel and
SiglipVisionModel (resized position embeddings included), the HF state-dict
mapping both ways, pooling, position embeddings, bf16, remat and scan."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from cliplite_jax.models import hf_vision, vit
from conftest import quick_init

TINY_HF = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=2, image_size=32, patch_size=8)
TINY = dict(width=32, depth=2, heads=2, mlp_dim=64, patch=8, posemb_grid=4)
CLIP_FIELDS = dict(pool="token", class_token=True, pre_norm=True,
                   act="quick_gelu", layer_norm_eps=1e-5)
SIGLIP_FIELDS = dict(pool="map", class_token=False, pre_norm=False,
                     act="gelu_tanh", layer_norm_eps=1e-6)


def _perturbed(model, seed: int):
  """HF initialises biases to 0 and LayerNorms to 1/0, where a misplaced
  tensor would not show: shift every tensor by noise."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model.eval()


@pytest.fixture(scope="module")
def hf_clip():
  torch.manual_seed(0)
  config = transformers.CLIPVisionConfig(**TINY_HF, hidden_act="quick_gelu")
  return _perturbed(transformers.CLIPVisionModel(config), 1)


@pytest.fixture(scope="module")
def hf_siglip():
  torch.manual_seed(0)
  config = transformers.SiglipVisionConfig(**TINY_HF)
  assert config.hidden_act == "gelu_pytorch_tanh" and config.vision_use_head
  return _perturbed(transformers.SiglipVisionModel(config), 2)


def _images(batch: int, h: int, w: int, seed: int = 0) -> np.ndarray:
  return np.random.RandomState(seed).randn(batch, h, w, 3).astype(np.float32)


def _hf_pooled(model, images: np.ndarray, interpolate: bool) -> np.ndarray:
  pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    return model(pixels, interpolate_pos_encoding=interpolate
                 ).pooler_output.numpy()


def _apply(module: vit.ViT, params, images) -> np.ndarray:
  return np.asarray(jax.jit(lambda p, x: module.apply({"params": p}, x,
                                                      False))(params, images))


def _init(module: vit.ViT, seed: int = 0) -> dict:
  return quick_init(module, jax.random.key(seed), jnp.zeros((1, 32, 32, 3)),
                    False)["params"]


# HF resizes with torch bicubic, align_corners=False (not bilinear): 48 and
# 40×24 grow the 4×4 grid to 6×6 and 5×3, 24 shrinks it to 3×3.
@pytest.mark.parametrize("hw", [(32, 32), (48, 48), (40, 24), (24, 24)])
def test_clip_matches_transformers(hf_clip, hw):
  fields = hf_vision.vit_fields_from_hf_config(hf_clip.config.to_dict())
  assert fields == dict(TINY, **CLIP_FIELDS, posemb="learn")
  params = hf_vision.clip_vision_params(hf_clip.state_dict(), 2)
  images = _images(3, *hw)
  np.testing.assert_allclose(
      _apply(vit.ViT(**fields), params, images),
      _hf_pooled(hf_clip, images, hw != (32, 32)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("hw", [(32, 32), (48, 40)])
def test_siglip_matches_transformers(hf_siglip, hw):
  fields = hf_vision.vit_fields_from_hf_config(hf_siglip.config.to_dict())
  assert fields == dict(TINY, **SIGLIP_FIELDS, posemb="learn")
  params = hf_vision.siglip_vision_params(hf_siglip.state_dict(), 2)
  images = _images(3, *hw)
  np.testing.assert_allclose(
      _apply(vit.ViT(**fields), params, images),
      _hf_pooled(hf_siglip, images, hw != (32, 32)), atol=1e-5, rtol=0)


def test_state_dicts_round_trip(hf_clip, hf_siglip):
  for model, load, save in (
      (hf_clip, hf_vision.clip_vision_params,
       hf_vision.to_clip_vision_state_dict),
      (hf_siglip, hf_vision.siglip_vision_params,
       hf_vision.to_siglip_vision_state_dict)):
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    back = save(load(state, 2))
    assert back.keys() == state.keys()
    for k in state:
      np.testing.assert_array_equal(back[k], state[k], err_msg=k)
    # As inside a whole CLIPModel/SiglipModel: other towers' tensors ignored.
    whole = {"vision_model." + k: v for k, v in state.items()}
    whole["text_model.embeddings.token_embedding.weight"] = np.zeros((3, 2))
    stacked = load(whole, 2, scan=True)
    assert stacked["blocks"]["attn"]["query"]["kernel"].shape == (2, 32, 32)
    assert save(stacked, prefix="vision_model.").keys() == {
        "vision_model." + k for k in state}


@pytest.mark.parametrize("kind", ["clip", "siglip_scan"])
def test_export_to_transformers(kind):
  """Our randomly initialised tower, exported, runs the same in HF: CLIP's
  patch bias (absent in HF) folds into the position embedding, even under
  resizing; a scanned tower's stacked params unstack."""
  clip = kind == "clip"
  module = vit.ViT(**TINY, **(CLIP_FIELDS if clip else SIGLIP_FIELDS),
                   scan=not clip)
  rng = np.random.RandomState(3)  # init leaves biases 0, LayerNorms 1/0
  params = jax.tree.map(lambda p: p + 0.1 * rng.randn(*p.shape).astype(
      np.float32), _init(module))
  config = hf_vision.hf_config_from_vit(module)
  assert config.pop("model_type") == ("clip_vision_model" if clip
                                      else "siglip_vision_model")
  hf_class = (transformers.CLIPVisionModel if clip
              else transformers.SiglipVisionModel)
  config_class = (transformers.CLIPVisionConfig if clip
                  else transformers.SiglipVisionConfig)
  model = hf_class(config_class(**config)).eval()
  save = (hf_vision.to_clip_vision_state_dict if clip
          else hf_vision.to_siglip_vision_state_dict)
  model.load_state_dict({k: torch.tensor(v)
                         for k, v in save(params).items()}, strict=True)
  for hw in ((32, 32), (48, 48)):
    images = _images(2, *hw, seed=4)
    np.testing.assert_allclose(_apply(module, params, images),
                               _hf_pooled(model, images, hw != (32, 32)),
                               atol=1e-5, rtol=0)


def test_hf_errors(hf_clip):
  config = hf_clip.config.to_dict()
  with pytest.raises(hf_vision.HFVisionError,
                     match=r"^clip_vision_model: hidden_act 'relu' is not "
                     r"supported \(only [^\n]*\)$"):
    hf_vision.vit_fields_from_hf_config(dict(config, hidden_act="relu"))
  with pytest.raises(hf_vision.HFVisionError, match="model_type 'bert'"):
    hf_vision.vit_fields_from_hf_config(dict(config, model_type="bert"))
  whole = transformers.CLIPConfig(vision_config=config).to_dict()
  assert hf_vision.vit_fields_from_hf_config(whole)["depth"] == 2
  state = hf_clip.state_dict()
  # A 2-layer tower read as 1 layer: layer 1's 16 tensors are left over.
  with pytest.raises(hf_vision.HFVisionError,
                     match=r"^[^\n]*: 0 tensors missing [^\n]*, 16 unexpected "
                     r"\(e\.g\. \['encoder\.layers\.1\.[^\n]*$"):
    hf_vision.clip_vision_params(state, 1)
  with pytest.raises(hf_vision.HFVisionError, match="1 tensors missing"):
    hf_vision.clip_vision_params(
        {k: v for k, v in state.items() if k != "post_layernorm.bias"}, 2)
  with pytest.raises(hf_vision.HFVisionError, match="neither"):
    hf_vision.hf_config_from_vit(vit.ViT(**TINY, pool="gap"))


def test_parse_variant():
  assert vit.parse_variant("B/16") == dict(width=768, depth=12, heads=12,
                                           mlp_dim=3072, patch=16)
  assert vit.parse_variant("So400m/14")["mlp_dim"] == 4304
  for bad in ("X/16", "B16", "B/0", "B/x", "b/16", "B/16/2", ""):
    with pytest.raises(ValueError, match=r"^unknown ViT variant [^\n]*$"):
      vit.parse_variant(bad)


@pytest.mark.parametrize("grid", [(7, 3), (2, 3), (4, 4)])
def test_resize_posemb_matches_torch(grid):
  posemb = np.random.RandomState(5).randn(16, 6).astype(np.float32)
  as_torch = torch.from_numpy(posemb.reshape(1, 4, 4, 6)).permute(0, 3, 1, 2)
  for method in vit.RESIZES:
    expected = torch.nn.functional.interpolate(
        as_torch, size=grid, mode=method, align_corners=False)
    np.testing.assert_allclose(
        vit.resize_posemb(jnp.asarray(posemb), grid, method),
        expected.permute(0, 2, 3, 1).reshape(-1, 6).numpy(), atol=5e-6)
  if grid[0] >= 4 and grid[1] >= 4:  # jax.image.resize antialiases shrinking
    np.testing.assert_allclose(
        vit.resize_posemb(jnp.asarray(posemb), grid, "bilinear"),
        jax.image.resize(posemb.reshape(4, 4, 6), (*grid, 6),
                         "bilinear").reshape(-1, 6), atol=1e-6)


def test_sincos2d_values():
  h, w, width = 3, 5, 16
  got = vit.posemb_sincos2d(h, w, width)
  assert got.shape == (h * w, width) and got.dtype == np.float32
  for y in range(h):
    for x in range(w):
      for k in range(4):
        omega = 10_000.0 ** (-k / 3)
        row = got[y * w + x]
        np.testing.assert_allclose(
            [row[k], row[4 + k], row[8 + k], row[12 + k]],
            [math.sin(x * omega), math.cos(x * omega), math.sin(y * omega),
             math.cos(y * omega)], atol=1e-6)
  # Dot products depend only on the offset between positions.
  gram = got @ got.T
  np.testing.assert_allclose(gram[0 * w + 0, 1 * w + 2],
                             gram[2 * w + 2, 1 * w + 0], atol=1e-5)


def _shuffle_patches(images: np.ndarray, patch: int, seed: int) -> np.ndarray:
  b, h, w, c = images.shape
  blocks = images.reshape(b, h // patch, patch, w // patch, patch, c)
  blocks = blocks.transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, patch, patch, c)
  order = np.random.RandomState(seed).permutation(blocks.shape[1])
  blocks = blocks[:, order].reshape(b, h // patch, w // patch, patch, patch, c)
  return blocks.transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def test_gap_pooling_and_position_embeddings():
  images = _images(2, 32, 32, seed=6)
  shuffled = _shuffle_patches(images, 8, seed=7)
  module = vit.ViT(**TINY, pool="gap")
  params = _init(module)
  params["pos_embed"] = jnp.zeros_like(params["pos_embed"])
  out, state = jax.jit(lambda x: module.apply(
      {"params": params}, x, False, mutable="intermediates"))(images)
  # gap: LayerNorm of the mean of the patch tokens, class token left out.
  tokens = np.asarray(state["intermediates"]["encoded"][0])[:, 1:]
  mean = tokens.mean(axis=1)
  centred = mean - mean.mean(-1, keepdims=True)
  expected = (centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + 1e-6)
              * params["ln_post"]["scale"] + params["ln_post"]["bias"])
  np.testing.assert_allclose(out, expected, atol=1e-5)
  # Without position information the tower cannot tell the patches' order.
  np.testing.assert_allclose(_apply(module, params, shuffled), out, atol=1e-5)
  sincos = vit.ViT(**TINY, pool="gap", posemb="sincos2d", class_token=False)
  params = _init(sincos)
  assert "pos_embed" not in params
  assert np.abs(_apply(sincos, params, shuffled)
                - _apply(sincos, params, images)).max() > 1e-2


def _loss_and_grads(module, params, images):
  # Not a sum of squares: after a LayerNorm that is nearly constant, and its
  # gradients mostly rounding noise.
  weights = np.random.RandomState(10).randn(module.width).astype(np.float32)
  loss = lambda p: jnp.sum(module.apply({"params": p}, images, False) * weights)
  return jax.jit(jax.value_and_grad(loss))(params)


def test_bfloat16_compute():
  module = vit.ViT(**TINY, **SIGLIP_FIELDS)
  params = _init(module)
  images = _images(4, 32, 32, seed=8)
  full = _apply(module, params, images)
  half = _apply(module.clone(dtype=jnp.bfloat16), params, images)
  assert half.dtype == np.float32
  assert np.abs(half - full).max() < 0.05 * np.abs(full).max()
  assert not np.array_equal(half, full)


def test_remat_and_scan_match_unrolled():
  module = vit.ViT(**TINY, **CLIP_FIELDS)
  params = _init(module)
  images = _images(2, 40, 40, seed=9)
  loss, grads = _loss_and_grads(module, params, images)
  remat_loss, remat_grads = _loss_and_grads(module.clone(remat=True), params,
                                            images)
  np.testing.assert_array_equal(remat_loss, loss)
  # The backward pass recomputes the blocks in another program, which XLA
  # may fuse otherwise: the same gradients up to float32 rounding (about
  # 1e-7 of the largest; a wrong recomputation is off by far more).
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-5, atol=1e-6 * scale), remat_grads, grads)
  scanned = module.clone(scan=True, remat=True)
  stacked = hf_vision.stack_blocks(params)
  assert (jax.tree.map(np.shape, stacked)
          == jax.tree.map(np.shape, _init(scanned)))
  scan_loss, scan_grads = _loss_and_grads(scanned, stacked, images)
  np.testing.assert_allclose(scan_loss, loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6,
                                                       rtol=1e-5),
               scan_grads, hf_vision.stack_blocks(grads))


def test_field_checks():
  with pytest.raises(ValueError, match="pool 'token' needs class_token"):
    _init(vit.ViT(**TINY, class_token=False))
  with pytest.raises(ValueError, match="act must be one of"):
    _init(vit.ViT(**TINY, act="relu"))
  assert vit.ViT(**TINY).num_features == 32


def _photos(size: int) -> np.ndarray:
  """The real photographs of tests/photos.py, centre-cropped and resized to
  `size` as evaluation does, normalised with CLIP's mean and std: float32
  [N, size, size, 3]."""
  import photos
  from cliplite_jax.data import augment
  crops = []
  for name in sorted(photos.CAPTIONS):
    pixels = np.asarray(photos._pixels(name))
    if pixels.ndim == 2:  # grey
      pixels = np.repeat(pixels[..., None], 3, -1)
    crops.append(augment.center_crop_resize(pixels[..., :3], size))
  mean = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
  std = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
  return (np.stack(crops).astype(np.float32) / 255 - mean) / std


@pytest.mark.parametrize("family,size", [("clip", 32), ("clip", 48),
                                         ("siglip", 32)])
def test_real_photographs_match_transformers_to_1e_4_relative(
    hf_clip, hf_siglip, family, size):
  """The issue's bar: on real photographs (not noise), ours and
  transformers' pooled features differ by ≤ 1e-4 of their largest value."""
  model = hf_clip if family == "clip" else hf_siglip
  load = (hf_vision.clip_vision_params if family == "clip"
          else hf_vision.siglip_vision_params)
  fields = hf_vision.vit_fields_from_hf_config(model.config.to_dict())
  images = _photos(size)
  ours = _apply(vit.ViT(**fields), load(model.state_dict(), 2), images)
  theirs = _hf_pooled(model, images, size != 32)
  assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()
