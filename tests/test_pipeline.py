"""The grain input pipeline: batches, epochs, flips, exact resume."""
import io

import grain
import ml_collections
import numpy as np
import pytest
from PIL import Image

from cliplite_jax.data import (augment, pipeline, sources, text as text_lib,
                               vocabulary)
from conftest import assert_stream_resumes


def _png(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def _tokenizer(config):
  captions = vocabulary.all_captions(config, "train")
  return text_lib.fixed_length(text_lib.train_wordpiece(captions, 256),
                               config.data.max_tokens)


def test_batches_have_expected_shapes_and_values(tiny):
  tokenizer = _tokenizer(tiny)
  batch = next(iter(pipeline.train_dataset(tiny, tokenizer)))
  assert batch["images"].shape == (16, 32, 32, 3)
  assert batch["images"].dtype == np.uint8
  assert batch["images"].max() > 200  # light background survives the crop
  for key in ("input_ids", "attention_mask"):
    assert batch[key].shape == (16, 30) and batch[key].dtype == np.int32
  cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
  assert np.all(batch["input_ids"][:, 0] == cls)
  lengths = batch["attention_mask"].sum(1)
  assert np.all(batch["input_ids"][np.arange(16), lengths - 1] == sep)
  assert np.all(batch["input_ids"][batch["attention_mask"] == 0] == 0)


def test_epoch_shuffle_batches_distinct_and_reshuffled():
  ds = pipeline.EpochShuffle(grain.MapDataset.range(10), seed=3, batch_size=4)
  first, second = [ds[i] for i in range(8)], [ds[i] for i in range(8, 16)]
  # Each epoch is 8 distinct elements (2 full batches), drawn anew.
  assert len(set(first)) == 8 and len(set(second)) == 8
  assert first != second
  assert [ds[i] for i in range(8)] == first  # deterministic


def _assert_resumes_exactly(config, total: int, stop_after: int):
  """A fresh iterator given the state after `stop_after` batches continues
  with exactly the batches an uninterrupted one yields."""
  assert_stream_resumes(config, _tokenizer(config), total, stop_after)


def test_iterator_state_resumes_exactly(tiny):
  _assert_resumes_exactly(tiny, total=20, stop_after=7)  # crosses an epoch


def test_flip_swaps_left_and_right_exactly_when_flipped():
  image = np.zeros((8, 8, 3), np.uint8)
  image[:, 4:] = 255  # bright right half
  example = {"image": _png(image),
             "captions": [b"a red circle to the left of a blue square"]}
  tokenizer = text_lib.fixed_length(text_lib.train_wordpiece(
      ["a red circle to the left of a blue square right"], 64), 16)
  cfg = ml_collections.ConfigDict(dict(
      image_size=8, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=True,
      max_words=30, color_jitter=(0.4, 0.4, 0.4, 0.1), color_jitter_prob=0.0))
  transform = pipeline.TrainTransform(sources.SOURCES["shapes_captions"],
                                      tokenizer, cfg)
  left_id, right_id = tokenizer.token_to_id("left"), tokenizer.token_to_id("right")
  flips = 0
  for seed in range(40):
    out = transform.random_map((0, example), np.random.default_rng(seed))
    flipped = out["images"][:, :4].mean() > out["images"][:, 4:].mean()
    flips += flipped
    ids = set(out["input_ids"].tolist())
    assert (right_id in ids) == flipped and (left_id in ids) == (not flipped)
  assert 5 < flips < 35


def test_clean_caption():
  assert text_lib.clean_caption(b"Two Shapes: a RED circle, a cat!") == (
      "two shapes a red circle a cat")
  assert text_lib.clean_caption(" ".join(["w"] * 40)).count("w") == 30
  assert text_lib.swap_left_right("left of the right leftover") == (
      "right of the left leftover")


def test_color_jitter_brightness_alone_scales_every_pixel_by_one_factor():
  rng = np.random.default_rng(0)
  image = rng.integers(20, 150, (16, 16, 3)).astype(np.uint8)
  factors = []
  for seed in range(20):
    out = augment.color_jitter(image, np.random.default_rng(seed), 0.4, 0.0,
                               0.0, 0.0, p=1.0)
    pixels = image.astype(np.float64)
    factor = np.sum(out * pixels) / np.sum(pixels ** 2)  # least squares
    # PIL's brightness blend with black: round(pixel · f), clipped.
    np.testing.assert_allclose(out, np.clip(image * factor, 0, 255), atol=1.01)
    factors.append(factor)
  assert 0.6 <= min(factors) and max(factors) <= 1.4
  assert max(factors) - min(factors) > 0.3


def test_color_jitter_probability_and_hue():
  image = np.zeros((4, 4, 3), np.uint8)
  image[..., 0] = 200  # pure red: hue 0
  untouched = sum(np.array_equal(augment.color_jitter(
      image, np.random.default_rng(s)), image) for s in range(200))
  assert 20 < untouched < 60  # applied with probability 0.8
  shifted = augment.color_jitter(image, np.random.default_rng(0), 0, 0, 0,
                                 0.1, p=1.0)
  # A hue shift keeps a saturated colour saturated but moves it off red.
  assert shifted[..., 0].min() > 150
  assert not np.array_equal(shifted, image)
  np.testing.assert_array_equal(
      augment.color_jitter(image, np.random.default_rng(0), p=0.0), image)


def test_bert_vocab_txt_directory_loads_as_uncased_wordpiece(tmp_path):
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "on",
           "the", "left", "run", "##s"]
  (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
  tokenizer = text_lib.load_tokenizer(str(tmp_path), 8)
  encoding = tokenizer.encode("A dog runs on the LEFT")
  assert encoding.tokens == ["[CLS]", "a", "dog", "run", "##s", "on", "the",
                             "[SEP]"]
  assert encoding.ids == [2, 5, 6, 10, 11, 7, 8, 3]
  with pytest.raises(FileNotFoundError, match="neither"):
    text_lib.load_tokenizer(str(tmp_path / ".."), 8)


def test_worker_processes_resume_exactly(tiny):
  tiny.data.num_workers = 2
  _assert_resumes_exactly(tiny, total=10, stop_after=4)


def test_second_views_for_the_image_image_and_text_text_terms(tiny):
  """With loss.image_image and loss.text_text on, each example also carries
  a second augmented view of its image and another of its captions; the
  first views are those of a run without them (the second are drawn
  last)."""
  tokenizer = _tokenizer(tiny)
  plain = next(iter(pipeline.train_dataset(tiny, tokenizer)))
  tiny.loss.image_image, tiny.loss.text_text = 1.0, 1.0
  batch = next(iter(pipeline.train_dataset(tiny, tokenizer)))
  for key in ("images", "input_ids", "attention_mask"):
    np.testing.assert_array_equal(batch[key], plain[key])
    assert batch[f"{key}_aug"].shape == batch[key].shape
  # Independent crops of the same image: (almost) never the same pixels.
  same = [np.array_equal(a, b) for a, b in zip(batch["images"],
                                                batch["images_aug"])]
  assert sum(same) <= 1
  # Another of the image's five (distinct) captions, every time.
  texts = [(tokenizer.decode(a.tolist()), tokenizer.decode(b.tolist()))
           for a, b in zip(batch["input_ids"], batch["input_ids_aug"])]
  assert all(a != b for a, b in texts), texts
