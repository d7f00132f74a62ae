"""Feature sets (precomputed modalities plus text, from .npy/.txt or
Parquet) and the multi-modality model's text tower with Symile's [MISSING]
token."""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cliplite_jax import config_io, evaluate, run_dir
from cliplite_jax.data import feature_sets, symile_xor, text, vectors
from cliplite_jax.models import multimodal
from cliplite_jax.models import text as text_model
from cliplite_jax.training import train
from cliplite_jax.validation import check_train
from conftest import REPO


def _write_folder(root, split, columns):
  folder = os.path.join(root, split)
  os.makedirs(folder, exist_ok=True)
  for name, values in columns.items():
    if isinstance(values, list):
      with open(os.path.join(folder, f"{name}.txt"), "w") as f:
        f.write("".join(value + "\n" for value in values))
    else:
      np.save(os.path.join(folder, f"{name}.npy"), values)


def _columns(n=6, seed=0):
  rng = np.random.default_rng(seed)
  return {"audio": rng.normal(size=(n, 4)).astype(np.float32),
          "image": rng.normal(size=(n, 3)).astype(np.float64),
          "caption": [f"text number {i}" for i in range(n)],
          "audio_missing": (np.arange(n) % 2).astype(np.uint8)}


def test_folder_and_parquet_read_the_same_examples(tmp_path):
  columns = _columns()
  _write_folder(str(tmp_path / "a"), "train", columns)
  os.makedirs(tmp_path / "b")
  pq.write_table(pa.table({
      "audio": [list(map(float, r)) for r in columns["audio"]],
      "image": pa.array([list(r) for r in columns["image"]],
                        pa.list_(pa.float64(), 3)),
      "caption": columns["caption"],
      "audio_missing": columns["audio_missing"].astype(bool)}),
      tmp_path / "b" / "train.parquet")
  for name in (f"features:{tmp_path / 'a'}", f"features:{tmp_path / 'b'}"):
    split = feature_sets.FeatureSplit(name, "train")
    assert len(split) == 6
    assert split.vectors == {"audio": 4, "image": 3}
    assert split.texts == ["caption"]
    assert feature_sets.modalities(name) == ("audio", "caption", "image")
    for i in range(6):
      example = split[i]
      np.testing.assert_array_equal(example["audio"], columns["audio"][i])
      np.testing.assert_allclose(example["image"], columns["image"][i],
                                 rtol=1e-7)
      assert example["image"].dtype == np.float32
      assert example["caption"] == f"text number {i}"
      assert int(example["audio_missing"]) == i % 2
    with pytest.raises(IndexError):
      split[6]


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(image=c["image"][:5]), "differ in their number of "
     "examples"),
    (lambda c: c["audio"].__setitem__((2, 1), np.nan), "audio of example 2 "
     "is NaN"),
    (lambda c: c.update(audio_missing=np.full(6, 2, np.uint8)),
     "audio_missing must hold one 0 or 1"),
    (lambda c: c.update(caption=c["caption"][:4]), "differ in their number"),
    (lambda c: c.update(image=np.zeros((6, 2, 2))), r"image must be numbers "
     r"\[N, d\] or \[N\]"),
    (lambda c: c["image"].__setitem__((4, 0), 1e300), "image of example 4 "
     "is NaN, infinite or beyond float32's range"),
    (lambda c: c.update(audio=np.float32(3)), "audio is a single number"),
    (lambda c: [c.update({k: v[:0]}) for k, v in list(c.items())],
     "has no examples"),
])
def test_a_damaged_split_is_one_clear_error(tmp_path, change, message):
  columns = _columns()
  change(columns)
  _write_folder(str(tmp_path), "train", columns)
  with pytest.raises(feature_sets.FeatureSetError, match=message):
    feature_sets.FeatureSplit(f"features:{tmp_path}", "train")


def test_files_a_split_cannot_mean_are_one_clear_error(tmp_path):
  name = f"features:{tmp_path}"
  _write_folder(str(tmp_path), "train", _columns())
  np.save(tmp_path / "train" / "caption.npy", np.zeros((6, 2)))
  with pytest.raises(feature_sets.FeatureSetError, match="both caption.npy "
                     "and caption.txt"):
    feature_sets.FeatureSplit(name, "train")
  os.remove(tmp_path / "train" / "caption.npy")
  (tmp_path / "train" / "caption.txt").write_bytes(b"caf\xe9\n" * 6)
  with pytest.raises(feature_sets.FeatureSetError, match="caption.txt is not "
                     "UTF-8"):
    feature_sets.FeatureSplit(name, "train")
  # Windows line endings and a byte-order mark are text files as any other.
  (tmp_path / "train" / "caption.txt").write_bytes(
      "\ufeffa\r\nb\r\n\r\nd\r\ne\r\nf\r\n".encode())
  assert [feature_sets.FeatureSplit(name, "train")[i]["caption"]
          for i in range(6)] == ["a", "b", "", "d", "e", "f"]
  os.makedirs(tmp_path / ".ipynb_checkpoints")
  assert feature_sets.splits(name) == ["train"]
  pq.write_table(pa.table({"v": pa.array([["x"], ["y"]])}),
                 tmp_path / "test.parquet")
  with pytest.raises(feature_sets.FeatureSetError, match="column v must hold "
                     "lists of numbers"):
    feature_sets.FeatureSplit(name, "test")
  pq.write_table(pa.table({"v": [[1.0], [2.0]], "when": pa.array(
      [0, 1], pa.timestamp("s"))}), tmp_path / "test.parquet")
  with pytest.raises(feature_sets.FeatureSetError, match="column when is "
                     "timestamp"):
    feature_sets.FeatureSplit(name, "test")
  # pandas' Categorical text and its index column.
  pq.write_table(pa.table({"v": [[1.0], [2.0]], "t": pa.array(
      ["a b", "c"]).dictionary_encode(), "__index_level_0__": [0, 1]}),
      tmp_path / "test.parquet")
  split = feature_sets.FeatureSplit(name, "test")
  assert split.texts == ["t"] and split.vectors == {"v": 1}
  assert split[1]["t"] == "c"


def test_a_missing_split_names_the_splits_there(tmp_path):
  _write_folder(str(tmp_path), "train", _columns())
  with pytest.raises(feature_sets.FeatureSetError,
                     match=r"split 'test': neither .* exists \(splits: "
                           r"\['train'\]\)"):
    feature_sets.FeatureSplit(f"features:{tmp_path}", "test")


def test_a_missing_text_is_the_missing_token_alone():
  tokenizer = text.train_wordpiece(["one zero one", "zero zero"], 40)
  plain_size = tokenizer.get_vocab_size()
  tokenizer = text.fixed_length(text.with_missing_token(tokenizer), 8)
  missing_id = tokenizer.token_to_id(text.MISSING_TOKEN)
  assert missing_id == plain_size  # appended, as Symile adds it
  cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
  transform = vectors.VectorTransform(("v", "t", "t_missing"), ("t",),
                                      tokenizer, missing_token=True)
  example = {"v": np.ones(3, np.float32), "t": "one zero",
             "t_missing": np.uint8(1)}
  out = transform.random_map((0, example), None)
  np.testing.assert_array_equal(out["t"], [cls, missing_id, sep, 0, 0, 0, 0,
                                           0])
  np.testing.assert_array_equal(out["t_attention_mask"],
                                [1, 1, 1, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(out["v"], example["v"])
  # Present, or without the indicator: the text as it is.
  for flag, token in ((0, True), (1, False)):
    out = vectors.VectorTransform(("t",), ("t",), tokenizer, token)\
        .random_map((0, dict(example, t_missing=np.uint8(flag))), None)
    np.testing.assert_array_equal(out["t"], tokenizer.encode("one zero").ids)
    assert missing_id not in out["t"]
  # A present text that spells the token out is read as words.
  out = transform.random_map((0, dict(example, t="one [MISSING]",
                                      t_missing=np.uint8(0))), None)
  np.testing.assert_array_equal(out["t"],
                                tokenizer.encode("one [missing]").ids)
  assert missing_id not in out["t"]


def test_a_text_modality_is_its_tower_then_its_head():
  """The multi-modality model's text embedding, computed directly: the
  BERT tower's pooled feature (applied alone to the same parameters) times
  the head's kernel plus its bias; vector modalities are untouched by it."""
  config = config_io.load_file(
      f"{REPO}/configs/symile_features.py:data=/x,vectors=a:5,text=t,"
      f"tiny=True")
  model = multimodal.build(config)
  inputs = multimodal.dummy_inputs(config, 3)
  rng = np.random.default_rng(0)
  inputs["t"] = jnp.asarray(rng.integers(4, 50, (3, 16)), jnp.int32)
  inputs["t_attention_mask"] = jnp.asarray(
      np.arange(16)[None] < np.array([[5], [16], [2]]), jnp.int32)
  inputs["a"] = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
  variables = model.init(jax.random.key(0), inputs)
  params = variables["params"]
  out = model.apply(variables, inputs)
  tower = text_model.TextEncoder(
      vocab_size=1000, hidden=32, layers=1, heads=2, mlp_dim=128, max_len=16,
      pooling="mean", dropout=0.0)
  features = tower.apply({"params": params["towers_1"]}, inputs["t"],
                         inputs["t_attention_mask"])["features"]
  head = params["t_head"]
  np.testing.assert_allclose(
      out["embeddings"][1], features @ head["kernel"] + head["bias"],
      rtol=1e-5, atol=1e-6)
  # widths (): the vector tower is the identity, its head one affine map.
  np.testing.assert_allclose(
      out["embeddings"][0],
      inputs["a"] @ params["a_head"]["kernel"] + params["a_head"]["bias"],
      rtol=1e-5, atol=1e-6)


def _features_config(root, **fields):
  c = config_io.load_file(
      f"{REPO}/configs/symile_features.py:data={root},vectors=a:5+b:5,"
      f"text=c,tiny=True,steps=320,batch=64")
  c.optim.lr = dict(other=0.01)
  c.data.num_threads = 0
  c.log_every_steps, c.checkpoint_every_steps = 160, 320
  c.eval.batch_size = 64
  c.update_from_flattened_dict(fields)
  return c


def test_two_text_towers_or_a_frozen_one_are_refused():
  config = _features_config("/x")
  config.model.towers.b = dict(config.model.towers.c)
  with pytest.raises(config_io.UserError, match="at most one text modality"):
    check_train(config, 4)
  config = _features_config("/x")
  config.model.towers.c.train_last_layers = 0
  with pytest.raises(config_io.UserError, match="train_last_layers"):
    check_train(config, 4)
  with pytest.raises(config_io.UserError, match="needs data=DIR"):
    config_io.load_file(f"{REPO}/configs/symile_features.py")


def test_symile_learns_xor_with_one_modality_given_as_text(tmp_path):
  """The tiny XOR set (p = 1) written as a feature set with c as words:
  trained through the sharded step with a BERT text tower on 4 devices,
  Symile predicts each modality from the other two; the reported c_from_a+b
  equals the top-1 computed here from the restored model with NumPy. The
  run's tokenizer has the [MISSING] token; a vector tower on the text, or
  a text tower on a vector, is one clear error before anything is
  written."""
  root = str(tmp_path / "xor")
  symile_xor.write_feature_set(root, "tiny")
  config = _features_config(root)
  workdir = str(tmp_path / "run")
  metrics = train.train_and_evaluate(config, workdir)
  for m in ("a_from_b+c", "b_from_a+c", "c_from_a+b"):
    assert metrics[f"zeroshot/xor/{m}"] > 0.9, metrics

  _, model, variables, tokenizer, _ = run_dir.restore(workdir, config)
  assert tokenizer.token_to_id(text.MISSING_TOKEN) is not None
  split = feature_sets.FeatureSplit(config.data.name, "test")
  rows = [split[i] for i in range(len(split))]
  encoded = tokenizer.encode_batch([r["c"] for r in rows])
  ids = np.array([e.ids for e in encoded], np.int32)
  mask = np.array([e.attention_mask for e in encoded], np.int32)
  a, b = (np.stack([r[m] for r in rows]) for m in "ab")
  emb = model.apply(variables, {"a": a, "b": b, "c": ids,
                                "c_attention_mask": mask})["embeddings"]
  emb = [np.asarray(e, np.float64) for e in emb]
  words = [r["c"] for r in rows]
  distinct = sorted(set(words))
  first = [words.index(w) for w in distinct]  # a row holding each value
  scores = (emb[0] * emb[1]) @ emb[2][first].T  # Symile's MIP
  target = np.array([distinct.index(w) for w in words])
  own = scores[np.arange(len(rows)), target]
  others = np.where(np.eye(len(distinct), dtype=bool)[target], -np.inf,
                    scores)
  expected = np.mean(own > others.max(axis=1))
  assert abs(metrics["zeroshot/xor/c_from_a+b"] - expected) < 1.5 / len(rows)

  evaluated = evaluate.run_probes(config, model, variables, tokenizer,
                                  run_dir.restore(workdir, config)[4])
  assert evaluated["zeroshot/xor/c_from_a+b"] == pytest.approx(
      metrics["zeroshot/xor/c_from_a+b"])

  vector_tower = ml_collections.ConfigDict(
      dict(name="mlp", widths=(), input_dim=5))
  on_text = _features_config(root)
  on_text.model.towers.c = vector_tower
  on_vector = _features_config(root)
  on_vector.model.modalities = ("a", "b")
  sections = on_vector.model.towers.to_dict()
  on_vector.model.towers = ml_collections.ConfigDict(
      {"a": sections["c"], "b": sections["b"]})
  for wrong, message in ((on_text, "'c' is text: give it a text tower"),
                         (on_vector, "'a' is a vector: give it the mlp")):
    with pytest.raises(config_io.UserError, match=message):
      train.train_and_evaluate(wrong, str(tmp_path / "wrong"))
  assert not (tmp_path / "wrong").exists()

  # A test split unlike the training split stops the run before it starts.
  np.save(os.path.join(root, "test", "a.npy"),
          np.zeros((128, 6), np.float32))
  with pytest.raises(config_io.UserError, match=r"input_dim is 5, but "
                     r"features:\S+ test's 'a' has 6 values"):
    train.train_and_evaluate(config, str(tmp_path / "wrong"))
  assert not (tmp_path / "wrong").exists()
  # One distinct text after tokenising: top-1 would be 1 by construction.
  np.save(os.path.join(root, "test", "a.npy"), a)
  with open(os.path.join(root, "test", "c.txt"), "w") as f:
    f.write("uno cero\n" * len(rows))
  with pytest.raises(config_io.UserError, match="one distinct value of c "
                     "after tokenising"):
    evaluate.run_probes(config, model, variables, tokenizer,
                        run_dir.restore(workdir, config)[4])


def test_a_batch_carries_missing_texts_as_the_token_and_the_flags(tmp_path):
  """The training pipeline on the tiny XOR feature set with half of each
  modality missing: the run's tokenizer has [MISSING]; with the indicator
  every flagged text is [CLS] [MISSING] [SEP] and every other one its own
  words, and the vector modalities' flags ride along."""
  from cliplite_jax.data import pipeline, vocabulary
  root = str(tmp_path / "xor_m50")
  symile_xor.write_feature_set(root, "tiny_m50")
  config = _features_config(root, **{"model.missing": "indicator"})
  tokenizer = text.fixed_length(vocabulary.new_tokenizer(config),
                                config.data.max_tokens)
  missing = tokenizer.token_to_id(text.MISSING_TOKEN)
  batch = next(iter(pipeline.train_dataset(config, tokenizer)))
  assert set(batch) >= {"a", "b", "c", "c_attention_mask", "a_missing",
                        "b_missing", "c_missing"}
  gone = batch["c_missing"].reshape(-1) > 0
  assert 0.3 < gone.mean() < 0.7
  cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
  np.testing.assert_array_equal(batch["c"][gone][:, :3],
                                np.tile([cls, missing, sep], (gone.sum(), 1)))
  assert not batch["c"][gone][:, 3:].any()
  assert not (batch["c"][~gone] == missing).any()
  assert (batch["c_attention_mask"][~gone].sum(axis=1) == 7).all()  # 5 words
  for m in "ab":
    assert not batch[m][batch[f"{m}_missing"].reshape(-1) > 0].any()
