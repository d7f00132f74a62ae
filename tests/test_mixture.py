"""Mixtures of caption sets (`data.mixture`): weights, exact resume, the
same global batches on any number of processes, and a run that logs each
source's share."""
import json
import os

import numpy as np
import pytest

from cliplite_jax import config_io
from cliplite_jax.data import (mixture, pipeline, sources, text as text_lib,
                               vocabulary)
from cliplite_jax.training import train
from cliplite_jax.validation import check_train
from conftest import assert_stream_resumes_and_splits


@pytest.fixture
def mixed(tiny, photo_set):
  """The tiny shapes set at 0.7 and the photos at 0.3."""
  tiny.data.mixture = f"shapes_captions/tiny=0.7,{photo_set}=0.3"
  return tiny


def _tokenizer(config):
  return text_lib.fixed_length(text_lib.train_wordpiece(
      vocabulary.all_captions(config, "train"), 256), config.data.max_tokens)


def test_weights_are_normalised_and_bad_entries_are_one_line():
  assert mixture.parse("a=3,/x/b=1") == [("a", 0.75), ("/x/b", 0.25)]
  assert mixture.parse("gs://b/set=2") == [("gs://b/set", 1.0)]
  assert mixture.parse(" a = 1 , b=1") == [("a", 0.5), ("b", 0.5)]
  for bad, message in (("a", "not NAME=WEIGHT"), ("a=0", "positive"),
                       ("a=-1", "positive"), ("a=x", "positive"),
                       ("a=inf", "positive"), ("=1", "not NAME=WEIGHT"),
                       ("a=1,a=2", "names 'a' twice")):
    with pytest.raises(config_io.UserError, match=message):
      mixture.parse(bad)


def test_fractions_match_the_weights_over_10k_examples(mixed):
  """Each batch element says which source it came from; over 10,000
  examples each source's share is its weight within 1 % (grain's mixing
  keeps every prefix within a few elements of it), though the photos (9 of
  them) go round hundreds of epochs and shapes (256) a few dozen."""
  mixed.batch_size = 50
  mixed.data.image_size = 16
  batches = iter(pipeline.train_dataset(mixed, _tokenizer(mixed)))
  drawn = np.concatenate([next(batches)["source"] for _ in range(200)])
  assert len(drawn) == 10_000
  share = np.bincount(drawn, minlength=2) / len(drawn)
  np.testing.assert_allclose(share, [0.7, 0.3], atol=0.01)


def test_a_mixture_resumes_exactly_and_is_the_same_on_two_processes(mixed):
  """Mid-mixture, mid-epoch of both sources: a fresh iterator given the
  state after 5 batches yields the uninterrupted batches bit for bit; two
  processes' rows, side by side, are the one process's batches."""
  assert_stream_resumes_and_splits(mixed, _tokenizer(mixed), 9, 5)


def test_a_mixture_is_checked_before_anything_is_written(mixed, photo_set,
                                                         tmp_path):
  config = mixed.copy_and_resolve_references()
  config.data.name = "coco_captions"
  with pytest.raises(config_io.UserError, match="must be one of "
                     "data.mixture's sources"):
    check_train(config, 4)
  config = mixed.copy_and_resolve_references()
  config.data.mixture = f"shapes_captions/tiny=1,{tmp_path / 'none'}=1"
  with pytest.raises(sources.DatasetNotPreparedError, match="none"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_a_run_on_a_mixture_logs_each_sources_share(mixed, tmp_path, capsys):
  mixed.eval.probes = ()
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(mixed, workdir)
  out = capsys.readouterr().out
  assert "data: a mixture of 2 sources, train" in out
  assert ("mixture: shapes_captions weight 0.7, 256 examples, "
          f"{6 * 16 * 0.7 / 256:.2f} epochs; my_photos weight 0.3, 9 examples, "
          f"{6 * 16 * 0.3 / 9:.2f} epochs") in out
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f]
  shares = [(r["data/source/shapes_captions"], r["data/source/my_photos"])
            for r in logged if "data/source/shapes_captions" in r]
  assert len(shares) == mixed.total_steps
  for tiny_share, photo_share in shares:
    assert tiny_share + photo_share == pytest.approx(1)
    assert 0 < photo_share < 0.5  # 0.3 of each batch, within a few rows
