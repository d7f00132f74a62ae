"""The embedded shapes_captions set: determinism, held-out combos, labels."""
import re

import numpy as np
import tensorflow_datasets as tfds

from cliplite_jax.data import shapes

CONFIG = shapes.ShapesConfig(name="check", num_train=400, num_validation=100,
                             num_test=400)


def _combos(example):
  words = example["captions"][0].split()
  # "a large red circle and a small blue square"
  return {(words[i + 2], words[i + 1]) for i, w in enumerate(words)
          if w in ("small", "large")}


def test_examples_are_deterministic():
  a = shapes.make_example(CONFIG, "train", 7)
  b = shapes.make_example(CONFIG, "train", 7)
  np.testing.assert_array_equal(a["image"], b["image"])
  assert a["captions"] == b["captions"]
  c = shapes.make_example(CONFIG, "test", 7)
  assert a["captions"] != c["captions"] or not np.array_equal(a["image"],
                                                               c["image"])


def test_held_out_combinations_only_in_test():
  seen = {split: set() for split in ("train", "validation", "test")}
  for split, n in (("train", 400), ("validation", 100), ("test", 400)):
    for i in range(n):
      seen[split] |= _combos(shapes.make_example(CONFIG, split, i))
  assert not seen["train"] & shapes.HELD_OUT
  assert not seen["validation"] & shapes.HELD_OUT
  assert seen["test"] & shapes.HELD_OUT


def test_labels_agree_with_captions_and_pixels():
  for i in range(50):
    ex = shapes.make_example(CONFIG, "train", i)
    assert len(ex["captions"]) == 5
    largest = shapes.SHAPES[ex["largest_shape"]]
    color = shapes.COLOR_NAMES[ex["largest_color"]]
    assert ex["captions"][4].startswith(f"the largest shape is a {color} {largest}")
    named = set(re.findall("|".join(shapes.SHAPES), ex["captions"][0]))
    assert named == {s for s, p in zip(shapes.SHAPES, ex["shapes_present"]) if p}
    assert ex["image"].shape == (64, 64, 3) and ex["image"].dtype == np.uint8
    # The largest object's colour is really in the picture.
    rgb = np.array(shapes.COLORS[color])
    close = np.abs(ex["image"].astype(int) - rgb).max(axis=-1) <= 8
    assert close.sum() > 20


def test_captions_hand_checked():
  big = shapes._Object("square", "blue", 0.2, 0.7, 0.5)
  small = shapes._Object("circle", "red", 0.1, 0.2, 0.45)
  assert shapes.captions_for([big, small]) == [
      "a large blue square and a small red circle",
      "a picture of a square and a circle",
      "a small red circle to the left of a large blue square",
      "two shapes: a blue square, a red circle",
      "the largest shape is a blue square with one other shape",
  ]
  above = shapes._Object("circle", "red", 0.1, 0.72, 0.1)
  assert shapes.captions_for([big, above])[2] == (
      "a small red circle above a large blue square")
  assert shapes.captions_for([big])[2] == "a large blue square on the right"


def test_tfds_build(tiny_data_dir):
  builder = tfds.builder("shapes_captions/tiny", data_dir=tiny_data_dir)
  assert builder.info.splits["train"].num_examples == 256
  assert builder.info.splits["test"].num_examples == 128
  source = tfds.data_source("shapes_captions/tiny", split="test",
                            data_dir=tiny_data_dir)
  cfg = builder.builder_config
  generated = [shapes.make_example(cfg, "test", i) for i in range(cfg.num_test)]
  for index in (0, 3, 127):
    ex = source[index]
    captions = [c.decode() for c in ex["captions"]]
    # TFDS shuffles records on write: find the generated example again.
    match = [g for g in generated if g["captions"] == captions
             and np.array_equal(g["image"], ex["image"])]
    assert match, f"record {index} was not produced by the generator"
    assert ex["largest_shape"] == match[0]["largest_shape"]
    np.testing.assert_array_equal(ex["shapes_present"],
                                  match[0]["shapes_present"])
