"""Hugging Face BERT checkpoints: parity with transformers' PyTorch
BertModel, export round trip, clear errors, and frozen layers in training."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from cliplite_jax import export_text
from cliplite_jax.data import text as text_lib, vocabulary
from cliplite_jax.models import cliplite, hf_bert, text
from cliplite_jax.training import (checkpoint, optim, parallel,
                                   state as state_lib, train)

SENTENCES = ["a man rides a red bicycle down the street.",
             "two dogs.",
             "a small green circle to the left of a large blue square",
             "the cat sits on the table next to a cup of coffee"]


def _save_bert(path, tokenizer, pooler=True, safetensors=True, seed=0):
  """A small random transformers BertModel, saved with its vocab.txt."""
  torch.manual_seed(seed)
  config = transformers.BertConfig(
      vocab_size=tokenizer.get_vocab_size(), hidden_size=32,
      num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
      max_position_embeddings=64)
  model = transformers.BertModel(config, add_pooling_layer=pooler).eval()
  model.save_pretrained(path, safe_serialization=safetensors)
  vocab = tokenizer.get_vocab()
  with open(os.path.join(path, "vocab.txt"), "w") as f:
    f.writelines(f"{t}\n" for t in sorted(vocab, key=vocab.get))
  return model


@pytest.fixture(scope="module")
def wordpiece():
  return text_lib.train_wordpiece(SENTENCES * 3, 120)


def _batch(path):
  """Real sentences tokenised by the checkpoint's own tokenizer, padded."""
  tokenizer = text_lib.load_tokenizer(path, 16)
  ids, mask = text_lib.tokenize(tokenizer, SENTENCES)
  assert (mask == 0).any() and (mask == 1).any()
  return ids, mask


def _torch_outputs(model, ids, mask):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long))
  return {k: getattr(out, k).numpy() for k in ("last_hidden_state",
                                               "pooler_output")
          if getattr(out, k, None) is not None}


@pytest.mark.parametrize("safetensors", [True, False],
                         ids=["safetensors", "pytorch_model.bin"])
def test_matches_transformers_bert(tmp_path, wordpiece, safetensors):
  path = str(tmp_path / "bert")
  reference = _save_bert(path, wordpiece, safetensors=safetensors)
  module, variables = text.load_pretrained(path)
  ids, mask = _batch(path)
  ours = module.apply(variables, jnp.asarray(ids), jnp.asarray(mask))
  want = _torch_outputs(reference, ids, mask)
  assert set(want) == {"last_hidden_state", "pooler_output"}
  for key, value in want.items():
    assert np.abs(np.asarray(ours[key]) - value).max() <= 1e-4, key
    assert np.abs(value).max() > 0.1  # not a trivially small output


def test_export_round_trip_through_transformers(tmp_path, wordpiece):
  source = str(tmp_path / "bert")
  _save_bert(source, wordpiece)
  module, variables = text.load_pretrained(source)
  exported = str(tmp_path / "exported")
  text.export_pretrained(module, variables["params"], exported,
                         text_lib.load_tokenizer(source, 16))
  reloaded = transformers.BertModel.from_pretrained(exported).eval()
  ids, mask = _batch(exported)
  ours = module.apply(variables, jnp.asarray(ids), jnp.asarray(mask))
  for key, value in _torch_outputs(reloaded, ids, mask).items():
    assert np.abs(np.asarray(ours[key]) - value).max() <= 1e-4, key
  _, again = text.load_pretrained(exported)
  jax.tree.map(np.testing.assert_array_equal, again, variables)


def test_checkpoint_without_pooler_loads_with_cls_pooling(tmp_path, wordpiece):
  path = str(tmp_path / "bert")
  reference = _save_bert(path, wordpiece, pooler=False)
  module, variables = text.load_pretrained(path)
  assert module.pooling == "cls"
  ids, mask = _batch(path)
  ours = module.apply(variables, jnp.asarray(ids), jnp.asarray(mask))
  assert "pooler_output" not in ours
  want = _torch_outputs(reference, ids, mask)["last_hidden_state"]
  assert np.abs(np.asarray(ours["last_hidden_state"]) - want).max() <= 1e-4
  with pytest.raises(hf_bert.PretrainedError, match="no pooler"):
    text.load_pretrained(path, pooling="pooler")


def test_bad_checkpoints_name_what_was_found(tmp_path, wordpiece):
  with pytest.raises(hf_bert.PretrainedError, match="not a directory"):
    text.load_pretrained(str(tmp_path / "missing"))
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "vocab.txt").write_text("[PAD]\n")
  with pytest.raises(hf_bert.PretrainedError, match=r"no config.json.*vocab"):
    text.load_pretrained(str(empty))
  roberta = tmp_path / "roberta"
  roberta.mkdir()
  (roberta / "config.json").write_text(json.dumps(
      {"model_type": "roberta", "architectures": ["RobertaModel"]}))
  with pytest.raises(hf_bert.PretrainedError, match="'roberta'.*RobertaModel"):
    text.load_pretrained(str(roberta))
  path = str(tmp_path / "bert")
  _save_bert(path, wordpiece)
  os.remove(os.path.join(path, "model.safetensors"))
  with pytest.raises(hf_bert.PretrainedError, match="neither model.safetensors"):
    text.load_pretrained(path)


def test_training_from_pretrained_keeps_frozen_layers_bit_identical(
    tiny, tmp_path):
  # A BERT whose vocabulary is the demo captions' WordPiece.
  tokenizer = text_lib.train_wordpiece(
      vocabulary.all_captions(tiny, "train"), 200)
  path = str(tmp_path / "bert")
  _save_bert(path, tokenizer)
  tiny.model.text.pretrained = path
  tiny.model.text.train_last_layers = 1  # layer_1 and pooler train
  tiny.model.text.pooling = "pooler"
  tiny.eval.probes = ()
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny, workdir)
  assert tiny.model.text.hidden == 32 and tiny.model.text.layers == 2
  assert tiny.data.tokenizer == path  # its tokenizer came along

  mesh = parallel.make_mesh()
  model, tx = cliplite.build(tiny), optim.build(tiny)
  mngr = checkpoint.manager(workdir, tiny, read_only=True)
  state = checkpoint.restore(mngr, mngr.latest_step(),
                             state_lib.abstract_state(tiny, model, tx, mesh))
  trained = jax.device_get(state.model_params)[cliplite.TEXT_TOWER]
  _, start = text.load_pretrained(path, pooling="pooler")
  start = jax.device_get(start["params"])
  for name in ("word_embeddings", "position_embeddings", "embeddings_norm",
               "layer_0"):
    jax.tree.map(np.testing.assert_array_equal, trained[name], start[name])
  for name in ("layer_1", "pooler"):
    changed = jax.tree.leaves(jax.tree.map(
        lambda a, b: bool(np.any(a != b)), trained[name], start[name]))
    assert all(changed), name
  # The trained tower exports to a directory transformers reads.
  exported = str(tmp_path / "exported")
  assert export_text.export(workdir, exported) == 6
  ids, mask = _batch(exported)
  ours = model.text_encoder.apply({"params": trained}, jnp.asarray(ids),
                                  jnp.asarray(mask))
  want = _torch_outputs(
      transformers.BertModel.from_pretrained(exported).eval(), ids, mask)
  for key, value in want.items():
    assert np.abs(np.asarray(ours[key]) - value).max() <= 1e-4, key
  # The image tower trains as usual.
  fresh = state_lib.create_train_state(tiny, model, tx, jax.random.key(0))
  assert any(np.any(a != b) for a, b in zip(
      jax.tree.leaves(state.model_params[cliplite.IMAGE_TOWER]),
      jax.tree.leaves(fresh.model_params[cliplite.IMAGE_TOWER])))
