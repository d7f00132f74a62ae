"""The grain input pipeline: batches, epochs, flips, exact resume."""
import grain
import ml_collections
import numpy as np

from cliplite_jax.data import pipeline, sources
from cliplite_jax.data import text as text_lib


def _tokenizer(config):
  captions = pipeline.all_captions(config, "train")
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


def test_iterator_state_resumes_exactly(tiny):
  tokenizer = _tokenizer(tiny)
  dataset = pipeline.train_dataset(tiny, tokenizer)
  straight = iter(dataset)
  batches = [next(straight) for _ in range(20)]  # crosses an epoch (16 steps)
  interrupted = iter(dataset)
  for _ in range(7):
    next(interrupted)
  state = interrupted.get_state()
  resumed = iter(pipeline.train_dataset(tiny, tokenizer))
  resumed.set_state(state)
  for expected in batches[7:]:
    got = next(resumed)
    for key in expected:
      np.testing.assert_array_equal(got[key], expected[key])


def test_flip_swaps_left_and_right_exactly_when_flipped():
  image = np.zeros((8, 8, 3), np.uint8)
  image[:, 4:] = 255  # bright right half
  example = {"image": image,
             "captions": [b"a red circle to the left of a blue square"]}
  tokenizer = text_lib.fixed_length(text_lib.train_wordpiece(
      ["a red circle to the left of a blue square right"], 64), 16)
  cfg = ml_collections.ConfigDict(dict(
      image_size=8, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=True,
      max_words=30))
  transform = pipeline.TrainTransform(sources.SOURCES["shapes_captions"],
                                      tokenizer, cfg)
  left_id, right_id = tokenizer.token_to_id("left"), tokenizer.token_to_id("right")
  flips = 0
  for seed in range(40):
    out = transform.random_map(example, np.random.default_rng(seed))
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
