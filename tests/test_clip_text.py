"""CLIP / SigLIP text towers: parity with transformers' CLIPTextModel and
SiglipTextModel, causality, state-dict round trips, bfloat16, remat, and the
CLIP-style BPE tokenizer."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from cliplite_jax.data import clip_tokenizer, text as text_lib
from cliplite_jax.models import clip_text, hf_bert, hf_text

V, L, EOT, SOT = 100, 16, 99, 98  # CLIP's end token has the largest id.
SIGLIP_EOS = 1  # SigLIP's </s>, also its pad token.
TINY = dict(vocab_size=V, hidden_size=32, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=L)


def _clip_config(eos=EOT):
  # eos_token_id 2 is HF's legacy config: it pools at argmax(input_ids).
  return transformers.CLIPTextConfig(
      **TINY, hidden_act="quick_gelu", bos_token_id=SOT, eos_token_id=eos,
      pad_token_id=0)


def _siglip_config():
  return transformers.SiglipTextConfig(
      **TINY, projection_size=24, bos_token_id=None, eos_token_id=SIGLIP_EOS,
      pad_token_id=SIGLIP_EOS)


def _clip_batch(lengths=(L, 9, 4, 2), seed=0):
  """<sot> tokens <eot>, right-padded with 0, as CLIP's tokenizer writes."""
  rng = np.random.default_rng(seed)
  ids = np.zeros((len(lengths), L), np.int32)
  for row, n in zip(ids, lengths):
    row[:n] = [SOT, *rng.integers(1, SOT, n - 2), EOT]
  return ids, (np.arange(L) < np.asarray(lengths)[:, None]).astype(np.int32)


def _siglip_batch(lengths=(L, 9, 4, 2), seed=1):
  """tokens </s>, padded to the fixed length with the pad (= </s>) id."""
  rng = np.random.default_rng(seed)
  ids = np.full((len(lengths), L), SIGLIP_EOS, np.int32)
  for row, n in zip(ids, lengths):
    row[:n - 1] = rng.integers(2, V, n - 1)
  return ids, (np.arange(L) < np.asarray(lengths)[:, None]).astype(np.int32)


def _torch_outputs(model, ids, mask=None):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=None if mask is None
                else torch.tensor(mask, dtype=torch.long))
  return out.last_hidden_state.numpy(), out.pooler_output.numpy()


@functools.cache
def _apply(module):
  return jax.jit(module.apply)


def _ours(module, params, ids, mask):
  out = _apply(module)({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
  return {k: np.asarray(v) for k, v in out.items()}


def _assert_matches(ours, hidden, pooled, tol):
  assert np.abs(ours["last_hidden_state"] - hidden).max() <= tol
  assert np.abs(ours["pooler_output"] - pooled).max() <= tol
  np.testing.assert_array_equal(ours["features"], ours["pooler_output"])
  assert np.abs(pooled).max() > 0.1  # not a trivially small output


@pytest.mark.parametrize("eos", [EOT, 2], ids=["eos_token_id", "legacy_argmax"])
def test_matches_transformers_clip(eos):
  torch.manual_seed(0)
  config = _clip_config(eos)
  reference = transformers.CLIPTextModel(config).eval()
  fields = hf_text.clip_text_fields(config.to_dict())
  module = clip_text.CLIPTextTransformer(**fields)
  assert (module.pooling, module.causal, module.act) == ("eot", True,
                                                         "quick_gelu")
  params = hf_text.clip_text_params(reference.state_dict(), 2, 2)
  ids, mask = _clip_batch()
  _assert_matches(_ours(module, params, ids, mask),
                  *_torch_outputs(reference, ids, mask), 1e-5)


@pytest.mark.parametrize("use_mask", [False, True],
                         ids=["hf_default_no_mask", "with_mask"])
def test_matches_transformers_siglip(use_mask):
  torch.manual_seed(0)
  config = _siglip_config()
  reference = transformers.SiglipTextModel(config).eval()
  fields = hf_text.siglip_text_fields(config.to_dict())
  assert fields["mask_padding"] is False
  module = clip_text.CLIPTextTransformer(**dict(fields, mask_padding=use_mask))
  assert (module.pooling, module.act, module.num_features) == (
      "last", "gelu_tanh", 24)
  params = hf_text.siglip_text_params(reference.state_dict(), 2, 2)
  ids, mask = _siglip_batch()
  # HF's default (the SigLIP tokenizer gives no mask) attends to padding;
  # given a mask, HF hides padded keys as mask_padding=True does.
  _assert_matches(_ours(module, params, ids, mask),
                  *_torch_outputs(reference, ids, mask if use_mask else None),
                  1e-5)


def _random_params(module, seed=0):
  ids, mask = _clip_batch()
  return jax.jit(module.init)(jax.random.key(seed), jnp.asarray(ids),
                              jnp.asarray(mask))["params"]


@pytest.fixture(scope="module")
def clip_module():
  fields = hf_text.clip_text_fields(_clip_config().to_dict())
  module = clip_text.CLIPTextTransformer(**fields)
  return module, _random_params(module)


def test_causal(clip_module):
  module, params = clip_module
  ids, _ = _clip_batch(lengths=(L, L, L, L))
  mask = np.ones_like(ids)
  before = _ours(module, params, ids, mask)["last_hidden_state"]
  for i in (0, 5, L - 2):
    changed = ids.copy()
    changed[:, i + 1:] = (changed[:, i + 1:] + 7) % SOT
    after = _ours(module, params, changed, mask)["last_hidden_state"]
    np.testing.assert_array_equal(after[:, :i + 1], before[:, :i + 1])
    assert np.abs(after[:, i + 1:] - before[:, i + 1:]).max() > 1e-3


def test_parameter_tree(clip_module):
  _, params = clip_module
  assert sorted(params) == ["final_layer_norm", "layer_0", "layer_1",
                            "position_embedding", "token_embedding"]
  layer = params["layer_0"]
  assert sorted(layer) == ["fc1", "fc2", "layer_norm1", "layer_norm2",
                           "self_attn"]
  assert layer["self_attn"]["query"]["kernel"].shape == (32, 2, 16)
  assert layer["self_attn"]["out"]["kernel"].shape == (2, 16, 32)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_state_dict_round_trip_through_transformers(clip_module, family):
  if family == "clip":
    module, params = clip_module
    config, model_cls = _clip_config(), transformers.CLIPTextModel
    to_hf, from_hf = hf_text.to_clip_text_state_dict, hf_text.clip_text_params
    ids, mask = _clip_batch()
    torch_mask = mask
  else:
    module = clip_text.CLIPTextTransformer(
        **hf_text.siglip_text_fields(_siglip_config().to_dict()))
    params = _random_params(module, seed=1)
    config, model_cls = _siglip_config(), transformers.SiglipTextModel
    to_hf = hf_text.to_siglip_text_state_dict
    from_hf = hf_text.siglip_text_params
    ids, mask = _siglip_batch()
    torch_mask = None
  params = jax.device_get(params)
  state = to_hf(params, 2)
  reference = model_cls(config).eval()
  reference.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()},
                            strict=True)
  _assert_matches(_ours(module, params, ids, mask),
                  *_torch_outputs(reference, ids, torch_mask), 1e-5)
  # Back again, also from a two-tower model's prefixed state dict.
  prefixed = {**to_hf(params, 2, prefix="text_model."),
              "vision_model.post_layernorm.weight": np.ones(3, np.float32),
              "logit_scale": np.zeros((), np.float32)}
  for source in (reference.state_dict(), prefixed):
    jax.tree.map(np.testing.assert_array_equal, from_hf(source, 2, 2), params)


def test_config_fields_and_errors():
  two_tower = transformers.CLIPConfig(text_config=_clip_config().to_dict())
  assert hf_text.clip_text_fields(two_tower.to_dict()) == \
      hf_text.clip_text_fields(_clip_config().to_dict())
  # A config.json listing only what differs from the defaults.
  sparse = hf_text.siglip_text_fields({"model_type": "siglip",
                                       "text_config": {"hidden_size": 1152}})
  assert (sparse["width"], sparse["projection"], sparse["max_len"]) == (
      1152, 1152, 64)
  with pytest.raises(hf_text.UnsupportedTextModel,
                     match=r"hidden_act 'relu' is not implemented"):
    hf_text.clip_text_fields(dict(_clip_config().to_dict(), hidden_act="relu"))
  with pytest.raises(ValueError, match=r"'bert'.*not a SigLIP text model"):
    hf_text.siglip_text_fields({"model_type": "bert"})
  state = transformers.CLIPTextModel(_clip_config()).state_dict()
  del state["final_layer_norm.bias"]
  with pytest.raises(hf_bert.PretrainedError, match="final_layer_norm.bias"):
    hf_text.clip_text_params(state, 2, 2)


def test_bfloat16_close_to_float32(clip_module):
  module, params = clip_module
  ids, mask = _clip_batch()
  want = _ours(module, params, ids, mask)["features"]
  got = _ours(module.clone(dtype=jnp.bfloat16), params, ids, mask)["features"]
  assert got.dtype == np.float32
  assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()


def test_remat_same_outputs_and_grads():
  module = clip_text.CLIPTextTransformer(
      **dict(hf_text.clip_text_fields(_clip_config().to_dict()), dropout=0.1))
  params = _random_params(module)
  ids, mask = map(jnp.asarray, _clip_batch())

  def loss(m, p):
    out = m.apply({"params": p}, ids, mask, train=True,
                  rngs={"dropout": jax.random.key(1)})["features"]
    return jnp.sum(out ** 2), out

  results = [jax.jit(jax.value_and_grad(functools.partial(loss, m),
                                        has_aux=True))(params)
             for m in (module, module.clone(remat=True))]
  (_, plain), plain_grads = results[0]
  (_, remat), remat_grads = results[1]
  np.testing.assert_allclose(remat, plain, rtol=1e-6, atol=1e-6)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5,
                                 atol=1e-6), remat_grads, plain_grads)
  # Dropout is on in training: another rng gives other features.
  eval_out = _ours(module, params, ids, mask)["features"]
  assert np.abs(plain - eval_out).max() > 1e-4


CAPTIONS = ["A man rides a red bicycle down the street.", "Two dogs!",
            "a small green circle to the left of a large blue square",
            "The cat sits on the table next to a cup of coffee"] * 3


def test_clip_bpe_round_trips_and_wraps():
  tokenizer = clip_tokenizer.train_clip_bpe(CAPTIONS, 1000)
  size = tokenizer.get_vocab_size()
  assert 258 < size < 1000  # every merge this small corpus has
  start, end = (tokenizer.token_to_id(t) for t in (clip_tokenizer.START,
                                                   clip_tokenizer.END))
  assert (start, end) == (size - 2, size - 1)  # CLIP's order: eot largest
  for caption, normal in (("A man  rides a RED bicycle.",
                           "a man rides a red bicycle."),
                          ("Zebra Ω 漢字 café!", "zebra ω 漢字 café!")):
    ids = tokenizer.encode(caption).ids
    assert (ids[0], ids[-1]) == (start, end)
    assert start not in ids[1:-1] and end not in ids[1:-1]
    assert tokenizer.decode(ids) == normal
  # Whole words it saw are single tokens.
  assert tokenizer.encode("Bicycle").tokens[1:-1] == ["Ġbicycle"]
  with pytest.raises(ValueError, match="below the byte alphabet"):
    clip_tokenizer.train_clip_bpe(CAPTIONS, 200)
  # Fixed length as the trainer tokenises: truncation keeps <|endoftext|>
  # last, so "eot" pooling (sum(mask) − 1) lands on it.
  ids, mask = text_lib.tokenize(text_lib.fixed_length(tokenizer, 8),
                                [CAPTIONS[0], CAPTIONS[1]])
  assert ids.shape == (2, 8) and mask[1].sum() < 8
  np.testing.assert_array_equal(ids[np.arange(2), mask.sum(1) - 1], end)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_real_captions_match_transformers_to_1e_4_relative(family):
  """Real captions (the photo test set's), tokenised by a byte BPE trained
  on them and right-padded: ours and transformers' pooled features differ
  by ≤ 1e-4 of their largest value."""
  import photos
  captions = [c for group in photos.CAPTIONS.values() for c in group]
  tokenizer = text_lib.fixed_length(clip_tokenizer.train_clip_bpe(
      captions, 400), 24)
  ids, mask = text_lib.tokenize(tokenizer, captions)
  sizes = dict(TINY, vocab_size=tokenizer.get_vocab_size(),
               max_position_embeddings=24)
  torch.manual_seed(3)
  if family == "clip":
    end = tokenizer.token_to_id(clip_tokenizer.END)
    model = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        **sizes, hidden_act="quick_gelu", eos_token_id=end,
        bos_token_id=tokenizer.token_to_id(clip_tokenizer.START),
        pad_token_id=0)).eval()
    fields = hf_text.clip_text_fields(model.config.to_dict())
    params = hf_text.clip_text_params(model.state_dict(), 2, 2)
    _, want = _torch_outputs(model, ids, mask)
  else:
    model = transformers.SiglipTextModel(transformers.SiglipTextConfig(
        **sizes, projection_size=24)).eval()
    fields = hf_text.siglip_text_fields(model.config.to_dict())
    params = hf_text.siglip_text_params(model.state_dict(), 2, 2)
    _, want = _torch_outputs(model, ids)  # SigLIP attends to its padding
  got = _ours(clip_text.CLIPTextTransformer(**fields), params, ids,
              mask)["pooler_output"]
  assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
