"""COCO Captions through TFDS (mocked: no download), bad data, fractions."""
import json

import numpy as np
import pytest

from cliplite_jax import config_io
from cliplite_jax.data import pipeline, sources, text as text_lib, vocabulary
from fakes import fake_coco


@pytest.fixture
def coco(tiny):
  c = tiny
  c.data.name = "coco_captions"
  c.data.train_split = "train+restval"
  c.data.data_dir = ""
  c.data.color_jitter_prob = 0.8
  c.batch_size = 4
  return c


def _tokenizer(config):
  return text_lib.fixed_length(
      text_lib.train_wordpiece(vocabulary.all_captions(config, "train"), 64),
      config.data.max_tokens)


def test_coco_batches_have_expected_shapes_dtypes_and_ranges(coco):
  with fake_coco(12):
    tokenizer = _tokenizer(coco)
    batch = next(iter(pipeline.train_dataset(coco, tokenizer)))
  # Colour jitter (p 0.8) is drawn here and applied in the train step.
  assert set(batch) == {"images", "input_ids", "attention_mask", "skipped",
                        "color_jitter", "color_order"}
  assert batch["color_jitter"].shape == (4, 4)
  assert batch["color_jitter"].dtype == np.float32
  np.testing.assert_array_equal(np.sort(batch["color_order"], 1),
                                np.tile(np.arange(4), (4, 1)))
  assert batch["images"].shape == (4, 32, 32, 3)
  assert batch["images"].dtype == np.uint8
  assert batch["images"].std() > 20  # random pixels, not a blank crop
  assert batch["input_ids"].shape == (4, 30) and batch["input_ids"].dtype == np.int32
  assert 0 <= batch["input_ids"].min() and batch["input_ids"].max() < 64
  assert set(np.unique(batch["attention_mask"])) <= {0, 1}
  np.testing.assert_array_equal(batch["skipped"], 0)


def test_corrupt_images_and_empty_captions_are_skipped_and_counted(coco):
  bad = {2, 5, 9}
  with fake_coco(16, corrupt={2, 9}, empty={5}):
    tokenizer = _tokenizer(coco)
    stream = iter(pipeline.train_dataset(coco, tokenizer))
    batches = [next(stream) for _ in range(3)]
  consumed = 12 + sum(int(b["skipped"].sum()) for b in batches)
  # The stream's order, independently: the same epoch shuffle over indices.
  order = pipeline.EpochShuffle(pipeline.grain.MapDataset.range(16),
                                seed=coco.seed, batch_size=4)
  positions = [order[i] for i in range(consumed)]
  assert sum(p in bad for p in positions) == consumed - 12 > 0
  assert positions[-1] not in bad  # the last consumed element was kept


def test_fraction_subsets_are_seeded_nested_and_sized():
  quarter = pipeline.subset_indices(1000, 0.25, seed=0)
  half = pipeline.subset_indices(1000, 0.5, seed=0)
  assert len(quarter) == 250 and len(half) == 500
  assert set(quarter) <= set(half)
  np.testing.assert_array_equal(quarter, pipeline.subset_indices(1000, 0.25, 0))
  assert set(quarter) != set(pipeline.subset_indices(1000, 0.25, seed=1))
  np.testing.assert_array_equal(pipeline.subset_indices(7, 1.0, 0), np.arange(7))
  with pytest.raises(ValueError):
    pipeline.subset_indices(10, 0.0, 0)


def test_training_reads_only_the_fraction(coco):
  coco.data.fraction = 0.5
  kept = set(pipeline.subset_indices(16, 0.5, coco.data.fraction_seed))
  with fake_coco(16):
    tokenizer = _tokenizer(coco)
    stream = iter(pipeline.train_dataset(coco, tokenizer))
    seen = {tuple(row) for _ in range(4) for row in next(stream)["input_ids"]}
    allowed = {tuple(row) for i in kept for row in text_lib.tokenize(
        tokenizer, [text_lib.swap_left_right(c) if flip else c
                    for flip in (False, True)
                    for c in _clean_captions(coco, i)])[0]}
  assert seen <= allowed


def _clean_captions(config, index):
  example = sources.open_split(config.data.name, "train", None)[index]
  return [text_lib.clean_caption(c) for c in
          sources.decode_captions(sources.SOURCES["coco_captions"], example)]


def test_rewrites_are_sampled_with_the_originals(coco, tmp_path):
  path = tmp_path / "rewrites.json"
  path.write_text(json.dumps({str(1000 + i): ["zebra zebra zebra"]
                              for i in range(8)}))
  coco.data.rewrites = str(path)
  with fake_coco(8):
    tokenizer = text_lib.fixed_length(text_lib.train_wordpiece(
        vocabulary.all_captions(coco, "train") + ["zebra"] * 50, 2000), 30)
    stream = iter(pipeline.train_dataset(coco, tokenizer))
    ids = np.concatenate([next(stream)["input_ids"] for _ in range(20)])
  zebra = tokenizer.token_to_id("zebra")
  assert zebra is not None
  rewritten = (ids == zebra).any(axis=1).mean()
  assert 0.05 < rewritten < 0.4  # 1 rewrite among 6 captions ≈ 1/6


def test_bad_rewrites_file_is_a_user_error(tmp_path):
  path = tmp_path / "r.json"
  path.write_text("[1, 2]")
  with pytest.raises(config_io.UserError, match="must be a JSON object"):
    pipeline.load_rewrites(str(path))
  with pytest.raises(config_io.UserError, match="cannot read"):
    pipeline.load_rewrites(str(tmp_path / "missing.json"))


def test_unprepared_dataset_names_the_fix(tmp_path):
  with pytest.raises(sources.DatasetNotPreparedError, match="tfds build"):
    sources.open_split("coco_captions", "train", str(tmp_path))


