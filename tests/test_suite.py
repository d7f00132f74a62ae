"""The benchmark suite (`eval.suite`) on `tfds.testing.mock_data`: the sets
a user has are scored, the others skipped in one line each, and the means
are those of the sets' own metrics."""
import numpy as np
import pytest

from cliplite_jax.data import benchmark_sets, sources, text as text_lib
from cliplite_jax.probes import fewshot, suite, zeroshot
from fakes import class_jpeg, fake_tfds
from test_evaluate import _direct_image, _direct_text, _run, setup  # noqa: F401


def _class_examples(classes: int, label_key: str = "label", size: int = 32):
  def make(split: str, num_examples: int = 24):
    rng = np.random.default_rng(sum(map(ord, split)) + classes)
    labels = rng.integers(0, classes, num_examples)
    return [{"image": class_jpeg(rng, int(y), size=size),
             label_key: np.int64(y)} for y in labels]
  return make


def test_quick_suite_scores_what_is_there_and_skips_the_rest(setup, capsys):
  config, model, variables, tokenizer = setup
  # A caption set these probes do not score, so only the suite is read.
  config.data.name = "coco_captions"
  config.eval.probes = ("zeroshot", "fewshot")
  config.eval.suite = "quick"
  config.eval.fewshot.update(shots=(1, 2), seeds=2)
  makers = {"cifar10": _class_examples(10), "stl10": _class_examples(10),
            "cifar100": _class_examples(100)}  # no MNIST
  with fake_tfds(makers):
    got = _run(config, model, variables, tokenizer)
  out = capsys.readouterr().out
  assert "suite quick: 3 of 4 sets to score; skipped:" in out
  skipped = [line for line in out.splitlines() if "skipped mnist" in line]
  assert len(skipped) == 1 and "tfds build mnist" in skipped[0], out
  for done, key in enumerate(("cifar10", "cifar100", "stl10"), 1):
    assert f"suite quick {done}/3: {key} (" in out

  # STL-10's zero-shot against CLIP's templates averaged by hand.
  entry = benchmark_sets.all_sets()["stl10"]
  test = makers["stl10"]("test")
  prompts = [text_lib.clean_caption(t.format(c), config.data.max_words)
             for c in entry.classes for t in entry.templates]
  prompt_emb = _direct_text(config, model, variables, tokenizer, prompts)
  class_emb = zeroshot.class_embeddings(prompt_emb.reshape(
      len(entry.classes), len(entry.templates), -1))
  labels = np.array([int(ex["label"]) for ex in test])
  test_features, test_emb = _direct_image(config, model, variables, test)
  want = zeroshot.accuracy(test_emb, class_emb, labels, ks=(1, 5))
  assert got["zeroshot/stl10/top1"] == pytest.approx(float(want["top1"]))
  assert got["zeroshot/stl10/top5"] == pytest.approx(float(want["top5"]))
  # CIFAR-10 keeps the paper's single template and gains CLIP's 18.
  assert {"zeroshot/cifar10/top1", "zeroshot/cifar10_clip/top1"} <= set(got)
  headline = [got["zeroshot/cifar10_clip/top1"], got["zeroshot/cifar100/top1"],
              got["zeroshot/stl10/top1"]]
  assert got["suite/quick/zeroshot_top1"] == pytest.approx(np.mean(headline))
  assert got["suite/quick/sets"] == 3
  # Few-shot on the fit split's features, as the probe computes it.
  train = makers["stl10"]("train")
  fit_features = _direct_image(config, model, variables, train)[0]
  want_few = fewshot.evaluate(
      fit_features, np.array([int(ex["label"]) for ex in train]),
      test_features, labels, 10, (1, 2), 2, config.eval.fewshot.l2_reg)
  for k in (1, 2):
    assert got[f"fewshot/stl10/{k}shot"] == pytest.approx(want_few[k][0],
                                                          abs=1e-6)
    assert got[f"fewshot/stl10/{k}shot_std"] == pytest.approx(
        want_few[k][1], abs=1e-6)
  table = suite.markdown(config, 7, got)
  assert table.count("\n| ") == 4 + 1  # header, 3 sets, the mean
  assert "| STL-10 |" in table and "| **mean of 3** |" in table
  assert "fewshot 2shot" in table


def test_the_clip_benchmark_lists_every_set_it_cannot_read(tiny, tmp_path):
  tiny.data.data_dir = str(tmp_path)  # nothing prepared there
  tiny.eval.suite = "clip_benchmark"
  with fake_tfds({"stl10": _class_examples(10)}):
    present, missing = suite.availability(tiny, fits=False)
  assert present == ["stl10"]
  keys = benchmark_sets.SUITES["clip_benchmark"]
  assert [line.split()[0] for line in missing] == [k for k in keys
                                                   if k != "stl10"]
  assert all("\n" not in line for line in missing)
  manual = [line for line in missing if line.startswith("gtsrb")][0]
  assert "not in TFDS" in manual and "cliplite_jax.prepare" in manual


def test_imagenet_a_is_scored_on_its_200_classes():
  """TFDS labels ImageNet-A in ImageNet's 1000 classes; it is scored among
  its own 200, so each label becomes its position in that list."""
  entry = benchmark_sets.all_sets()["imagenet_a"]
  source = sources.SOURCES["imagenet_a"]
  imagenet = benchmark_sets.all_sets()["imagenet2012"].classes
  for position in (0, 57, 199):
    label = entry.relabel.index(position)
    assert source.labels({"label": np.int64(label)})["label"] == position
    assert entry.classes[position] == imagenet[label]
  assert sum(v >= 0 for v in entry.relabel) == 200


def test_a_suite_needs_zero_shot_and_old_runs_take_its_override(tiny):
  from cliplite_jax import config_io, evaluate, validation
  tiny.eval.suite, tiny.eval.probes = "quick", ("fewshot",)
  with pytest.raises(config_io.UserError,
                     match="add 'zeroshot' to eval.probes"):
    validation.check_eval(tiny)
  tiny.eval.suite = "imagenet_only"
  with pytest.raises(config_io.UserError, match="eval.suite.*one of"):
    validation.check_eval(tiny)
  # A run saved before suites existed: evaluate gives it the new fields
  # first, so that they can be overridden.
  del tiny.eval["suite"], tiny.eval["fewshot"]
  evaluate._add_absent_eval_fields(tiny)
  config = config_io.apply_overrides(
      tiny, ["eval.suite=quick", "eval.fewshot.seeds=5"],
      evaluate.OVERRIDABLE, {})
  assert config.eval.suite == "quick" and config.eval.fewshot.seeds == 5
