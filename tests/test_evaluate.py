"""Evaluation on every dataset path (mocked TFDS), checked against the same
probes fed with features computed directly, example by example; streamed
extraction across processes; device-count independence."""
import io
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import photos
from cliplite_jax import config_io, evaluate, prepare
from cliplite_jax.data import augment, eval_input, sources, text as text_lib
from cliplite_jax.models import cliplite
from cliplite_jax.probes import (evaluated, held_out, linear, plots, registry, retrieval,
                                 svm, zeroshot)
from cliplite_jax.training import parallel, state as state_lib, train
from conftest import quick_init, run_module
from fakes import (cifar10_examples, coco_examples, fake_coco, fake_tfds,
                   voc_examples)


@pytest.fixture
def setup(tiny):
  """A randomly initialised tiny model and a tokenizer for any caption."""
  tiny.eval.batch_size = 12  # several batches, the last one padded
  model = cliplite.build(tiny)
  variables = quick_init(
      model, {"params": jax.random.key(0), "prior": jax.random.key(1),
              "dropout": jax.random.key(2)},
      *state_lib.dummy_inputs(tiny), train=False)
  words = [" ".join(sources.CIFAR10_CLASSES + ("a picture of",))] + [
      " ".join(ex["captions"]["text"][0].decode().lower().split())
      for ex in coco_examples(8)]
  tokenizer = text_lib.fixed_length(
      text_lib.train_wordpiece(words, tiny.model.text.vocab_size),
      tiny.data.max_tokens)
  return tiny, model, variables, tokenizer


def _direct_image(config, model, variables, examples, key="image"):
  """(features, embeddings) of decodable images, one example at a time."""
  feats, embs = [], []
  for ex in examples:
    with Image.open(io.BytesIO(ex[key])) as image:
      pixels = np.asarray(image.convert("RGB"))
    x = augment.normalize(jnp.asarray(
        augment.center_crop_resize(pixels, config.data.image_size))[None])
    f, e = model.apply(variables, x, method=cliplite.CLIPLite.encode_image)
    feats.append(np.asarray(f[0]))
    embs.append(np.asarray(e[0]))
  return np.stack(feats), np.stack(embs)


def _direct_text(config, model, variables, tokenizer, texts):
  ids, mask = text_lib.tokenize(tokenizer, texts)
  return np.asarray(model.apply(variables, ids, mask,
                                method=cliplite.CLIPLite.encode_text)[1])


def _run(config, model, variables, tokenizer, devices=None):
  return evaluate.run_probes(config, model, variables, tokenizer,
                             parallel.make_mesh(devices))


def test_voc_svm_path_matches_the_probe_on_direct_features(setup):
  config, model, variables, tokenizer = setup
  config.eval.probes = ("svm",)
  config.eval.transfer = ("voc/2007",)
  config.data.name = "coco_captions"  # supports no SVM: only VOC is scored
  requested = []
  with fake_tfds({"voc": voc_examples, "coco_captions":
                  lambda split: coco_examples(4)}, requested):
    got = _run(config, model, variables, tokenizer)
  assert list(got) == ["svm/voc/map"]
  assert ("voc", "train+validation") in requested and ("voc", "test") in requested

  def targets(examples):  # 1 present, -1 only difficult, 0 absent
    t = np.zeros((len(examples), 20), np.int32)
    for i, ex in enumerate(examples):
      t[i, list(ex["labels"])] = -1
      t[i, list(ex["labels_no_difficult"])] = 1
    return t

  train, test = voc_examples("train+validation"), voc_examples("test")
  assert (targets(test) == -1).any()  # the fake has difficult objects
  want = svm.voc07_map(
      _direct_image(config, model, variables, train)[0], targets(train),
      _direct_image(config, model, variables, test)[0], targets(test))["map"]
  assert got["svm/voc/map"] == pytest.approx(float(want), abs=1e-4)
  assert 0 < got["svm/voc/map"] <= 1


def test_cifar10_zeroshot_and_linear_paths(setup):
  config, model, variables, tokenizer = setup
  config.eval.probes = ("zeroshot", "linear", "retrieval")
  config.eval.transfer = ("cifar10",)
  config.eval.linear.update(epochs=5, batch_size=8)
  config.data.name = "coco_captions"
  config.eval.split = config.eval.fit_split = "test"
  with fake_tfds({"cifar10": cifar10_examples, "coco_captions":
                  lambda split: coco_examples(4)}):
    got = _run(config, model, variables, tokenizer)
  assert {"zeroshot/cifar10/top1", "zeroshot/cifar10/top5",
          "linear/cifar10/top1"} <= set(got)
  assert not any(k.startswith("retrieval/cifar10") for k in got)

  test, train = cifar10_examples("test"), cifar10_examples("train")
  labels = np.array([int(ex["label"]) for ex in test])
  prompts = [f"a picture of a {c}." for c in sources.CIFAR10_CLASSES]
  class_emb = _direct_text(config, model, variables, tokenizer,
                           [text_lib.clean_caption(p, 30) for p in prompts])
  test_features, test_emb = _direct_image(config, model, variables, test)
  want = zeroshot.accuracy(test_emb, class_emb, labels, ks=(1, 5))
  assert got["zeroshot/cifar10/top1"] == pytest.approx(float(want["top1"]))
  assert got["zeroshot/cifar10/top5"] == pytest.approx(float(want["top5"]))
  want_linear = linear.train_and_score(
      _direct_image(config, model, variables, train)[0],
      np.array([int(ex["label"]) for ex in train]), test_features, labels,
      num_classes=10, epochs=5, batch_size=8)["top1"]
  assert got["linear/cifar10/top1"] == pytest.approx(float(want_linear),
                                                     abs=1 / len(test))


def test_coco_retrieval_path_leaves_out_bad_examples(setup, capsys):
  config, model, variables, tokenizer = setup
  config.data.name = "coco_captions"
  config.eval.probes = ("retrieval", "gap")
  with fake_coco(30, corrupt={1, 17}, empty={4}):
    got = _run(config, model, variables, tokenizer)
  assert "coco_captions test: skipped 3 unusable examples of 30" in (
      capsys.readouterr().err)
  kept = [ex for i, ex in enumerate(coco_examples(30)) if i not in {1, 4, 17}]
  img_emb = _direct_image(config, model, variables, kept)[1]
  texts = [text_lib.clean_caption(t.decode(), 30)
           for ex in kept for t in ex["captions"]["text"]]
  owner = np.repeat(np.arange(len(kept)), 5).astype(np.int32)
  want = retrieval.recall_at_k(
      img_emb, _direct_text(config, model, variables, tokenizer, texts), owner)
  for key, value in want.items():
    assert got[f"retrieval/coco_captions/{key}"] == pytest.approx(
        float(value)), key
  assert 0 <= got["gap/coco_captions/modality_gap"] <= 2


def test_evaluation_is_the_same_on_one_and_four_devices(setup):
  config, model, variables, tokenizer = setup
  config.eval.linear.update(epochs=3)
  one = _run(config, model, variables, tokenizer, devices=1)
  four = _run(config, model, variables, tokenizer, devices=4)
  assert {"retrieval/shapes_captions/i2t_r1", "zeroshot/shapes_captions/top1",
          "svm/shapes_captions/map", "linear/shapes_captions/top1",
          "gap/shapes_captions/modality_gap"} <= set(one)
  assert one.keys() == four.keys()
  for key in one:
    # Per-device batch shapes change the kernels' summation order, so the
    # features agree to rounding only; the SVM's Newton solver stops at a
    # relative gradient of 1e-4, which lets that rounding reach its mAP.
    tolerance = 1e-4 if key.startswith("svm/") else 1e-5
    assert four[key] == pytest.approx(one[key], abs=tolerance), key


@pytest.mark.parametrize("processes", [1, 3])
def test_each_process_streams_its_share_in_equal_batch_counts(processes):
  examples = coco_examples(10, corrupt={6})
  source = sources.SOURCES["coco_captions"]
  shares = [list(eval_input.batches(source, examples, 16, 2, p, processes))
            for p in range(processes)]
  assert len({len(batches) for batches in shares}) == 1
  rows = [b for batches in shares for b in batches]
  index = np.concatenate([b["index"] for b in rows])
  valid = np.concatenate([b["valid"] for b in rows])
  assert sorted(index[index >= 0]) == list(range(10))
  assert sorted(index[valid]) == [i for i in range(10) if i != 6]
  assert all(b["images"].shape == (2, 16, 16, 3) for b in rows)


@pytest.fixture(scope="module")
def two_p_hosts(tmp_path_factory):
  """The photo caption set prepared twice, at a/p_host and b/p_host."""
  root = tmp_path_factory.mktemp("same_name")
  raw = photos.write_jsonl(str(root / "raw"))
  outs = [str(root / parent / "p_host") for parent in ("a", "b")]
  for out in outs:
    prepare.run(prepare.Options(source=[raw], out=out))
  return outs


def test_two_datasets_of_one_name_are_refused_before_any_work(
    tiny, two_p_hosts, tmp_path):
  first, second = two_p_hosts
  tiny.data.name, tiny.eval.transfer = first, (second,)
  tiny.batch_size = 8
  tiny.eval.probes = ("retrieval", "gap")
  with pytest.raises(config_io.UserError) as error:
    evaluated.check_evaluation(tiny)
  message = str(error.value)
  assert (f"data.name {first} and eval.transfer {second} would both be "
          f"scored as 'p_host'") in message
  assert f"ln -s {second} {second}_2" in message and "\n" not in message
  workdir = tmp_path / "run"
  with pytest.raises(config_io.UserError, match="both be scored as 'p_host'"):
    train.train_and_evaluate(tiny, str(workdir))
  assert not workdir.exists()
  tiny.eval.transfer = (first,)  # the training set again
  with pytest.raises(config_io.UserError,
                     match=f"{first} is evaluated twice .data.name and "
                           f"eval.transfer.*drop it from eval.transfer"):
    evaluated.check_evaluation(tiny)
  # A dataset no probe scores writes no keys: no clash.
  tiny.eval.transfer = (second,)
  tiny.eval.probes = ("svm",)
  evaluated.check_evaluation(tiny)
  # Another name for the same directory is another name in the keys.
  os.symlink(second, second + "_2")
  tiny.eval.transfer = (second + "_2",)
  tiny.eval.probes = ("retrieval", "gap")
  evaluated.check_evaluation(tiny)
  # Registered names clash by their name before "/" too.
  tiny.data.name, tiny.eval.transfer = "shapes_captions/tiny", (
      "shapes_captions/default",)
  with pytest.raises(config_io.UserError,
                     match="would both be scored as 'shapes_captions'.*drop "
                           "one from eval.transfer"):
    evaluated.check_evaluation(tiny)


def test_evaluate_refuses_a_name_clash_in_one_line(two_p_hosts, tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  result = run_module("cliplite_jax.evaluate", f"--workdir={workdir}",
                      "--config=configs/default.py",
                      f"--config.eval.transfer=({two_p_hosts[0]!r}, "
                      f"{two_p_hosts[1]!r})")
  assert result.returncode == 1, result.stderr[-3000:]
  line, = result.stderr.strip().splitlines()
  assert line.startswith("cliplite_jax.evaluate: error: eval.transfer ")
  assert "both be scored as 'p_host'" in line
  assert os.listdir(workdir) == []


@pytest.mark.parametrize("split,fit_split,overlap", [
    ("test", "train", False), ("train", "train", True),
    ("train", "train+validation", True), ("train[:10%]", "train", True),
    ("train[:80%]", "train[80%:]", False), ("validation", "train", False)])
def test_which_splits_overlap(split, fit_split, overlap):
  assert held_out.overlaps(split, fit_split) == overlap


def _spy_on_linear(monkeypatch):
  """Records the (fit, scored) features each linear probe gets."""
  calls, real = [], linear.train_and_score

  def spy(train_x, train_y, test_x, test_y, **kwargs):
    calls.append((np.asarray(train_x), np.asarray(test_x)))
    return real(train_x, train_y, test_x, test_y, **kwargs)
  monkeypatch.setattr(linear, "train_and_score", spy)
  return calls


def _disjoint(fit, scored):
  return not any((fit == row).all(axis=1).any() for row in scored)


def test_a_class_set_with_only_train_is_scored_on_held_out_images(
    setup, tmp_path, monkeypatch, capsys):
  config, model, variables, tokenizer = setup
  for folder, names in {"c0": ("astronaut", "rocket", "moon", "coins"),
                        "c1": ("chelsea", "coffee", "flower"),
                        "c2": ("camera", "motorcycle", "china")}.items():
    os.makedirs(tmp_path / "classes" / folder)
    for name in names:
      (tmp_path / "classes" / folder / f"{name}.jpg").write_bytes(
          photos.jpeg(name))
  out = str(tmp_path / "only_train")
  card = prepare.run(prepare.Options(
      source=[f"folder:{tmp_path / 'classes'}"], out=out))
  assert list(card["splits"]) == ["train"]
  calls = _spy_on_linear(monkeypatch)
  config.eval.probes = ("zeroshot", "linear")
  config.eval.transfer = (out,)
  config.eval.linear.update(epochs=2, batch_size=4)
  config.data.name = "coco_captions"  # scored with neither probe
  capsys.readouterr()
  with fake_coco(4):
    got = _run(config, model, variables, tokenizer)
  assert {"zeroshot/only_train/top1", "linear/only_train/top1"} <= set(got)
  (fit, scored), = calls
  assert (len(fit), len(scored)) == (8, 2)  # 20 % of the 10 held out
  assert _disjoint(fit, scored)
  assert (f"{out}: train overlaps train, which the SVM and linear probes fit "
          f"on: they fit on 8 of its images and are scored on the other 2"
          ) in capsys.readouterr().err

  # The training set scored on the split its probes fit on: likewise.
  calls.clear()
  config.data.name, config.eval.transfer = "shapes_captions/tiny", ()
  config.eval.probes = ("linear", "svm")
  config.eval.split = config.eval.fit_split = "train"
  got = _run(config, model, variables, tokenizer)
  (fit, scored), = calls
  assert (len(fit), len(scored)) == (205, 51)  # of 256
  assert _disjoint(fit, scored)
  assert 0 <= got["svm/shapes_captions/map"] <= 1


def _images_per_caption(dataset):
  """A toy probe: captions scored per usable test image."""
  _, caption_image = dataset.captions()
  return {f"toy/{dataset.name}/captions_per_image":
          len(caption_image) / len(dataset.test["index"])}


def test_a_new_probe_is_one_registry_row_and_its_function(setup, monkeypatch):
  """Adding a probe touches only the registry and its module: validation
  accepts its name, evaluation runs it on the datasets it supports (and
  only those), and the training curves draw it with the other probes."""
  config, model, variables, tokenizer = setup
  monkeypatch.setitem(registry.PROBES, "toy", registry.Probe(
      lambda source: bool(source.captions_key), _images_per_caption))
  config.eval.probes = ("toy",)
  config.eval.transfer = ("cifar10",)  # a class set: no captions, no toy
  config.data.name = "coco_captions"
  evaluated.check_evaluation(config)
  with fake_tfds({"coco_captions": lambda split: coco_examples(6),
                  "cifar10": cifar10_examples}):
    got = _run(config, model, variables, tokenizer)
  # coco_examples gives each image 5 captions (COCO's count).
  assert got == {"toy/coco_captions/captions_per_image": 5.0}
  assert dict(plots._PANELS)["evaluation"]("toy/coco_captions/x")
  config.eval.probes = ("toys",)
  with pytest.raises(config_io.UserError, match="unknown \\['toys'\\]"):
    evaluated.check_evaluation(config)
