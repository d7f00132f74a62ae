"""Training and evaluating on a user's own data: a prepared photo set from
the command line, the pipeline's guarantees on a prepared source, zero-shot
on a folder-per-class set with the user's prompts, ImageNet's zero-shot
path (CLIP's class names and 80 templates) on mock data."""
import json
import os

import jax
import numpy as np
import pytest

import photos
from cliplite_jax import evaluate, prepare
from cliplite_jax.data import (pipeline, prepared, sources, text as text_lib,
                               vocabulary)
from cliplite_jax.models import cliplite
from cliplite_jax.probes import zeroshot
from cliplite_jax.training import parallel, state as state_lib
from conftest import quick_init, run_module, tiny_overrides
from fakes import class_jpeg, fake_tfds
from test_evaluate import _direct_image, _direct_text


def test_prepare_train_and_evaluate_from_the_command_line(tmp_path,
                                                          tiny_data_dir):
  raw = photos.write_jsonl(str(tmp_path / "raw"))
  data = str(tmp_path / "my_photos")
  result = run_module("cliplite_jax.prepare", f"--source={raw}",
                      f"--out={data}")
  assert result.returncode == 0, result.stderr
  assert "skipped 1 missing, 1 undecodable" in result.stdout
  workdir = str(tmp_path / "run")
  result = run_module(
      "cliplite_jax.main", "--config=configs/default.py",
      f"--workdir={workdir}", *tiny_overrides(tiny_data_dir),
      f"--config.data.name={data}", "--config.batch_size=8",
      "--config.eval.probes=('retrieval','gap','zeroshot')")
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, "eval", "step_4.json")) as f:
    got = json.load(f)
  # 3 test photos, 3 captions each: every image's captions are within
  # any 9 ranks, every caption's image within any 3.
  assert got["retrieval/my_photos/i2t_r10"] == 1.0
  assert got["retrieval/my_photos/t2i_r5"] == 1.0
  assert 0 <= got["retrieval/my_photos/i2t_r1"] <= 1
  assert 0 <= got["gap/my_photos/modality_gap"] <= 2
  assert not any(k.startswith("zeroshot/") for k in got)  # a caption set
  # A byte flipped in a shard: the rerun (it re-evaluates), evaluate and a
  # new run each stop in one line naming the shard; nothing is written.
  card = prepared.read_card(data)
  shard = os.path.join(data, card["splits"]["test"]["shards"][0]["file"])
  with open(shard, "r+b") as f:
    f.seek(-100, os.SEEK_END)
    byte = f.read(1)
    f.seek(-100, os.SEEK_END)
    f.write(bytes([byte[0] ^ 1]))
  before = sorted(os.listdir(workdir))
  for command in (("cliplite_jax.main", "--config=configs/default.py",
                   f"--workdir={workdir}", *tiny_overrides(tiny_data_dir),
                   f"--config.data.name={data}", "--config.batch_size=8",
                   "--config.eval.probes=('retrieval','gap','zeroshot')"),
                  ("cliplite_jax.evaluate", f"--workdir={workdir}")):
    result = run_module(*command)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"{shard}: damaged prepared shard" in lines[0], (
        result.stderr[-3000:])
  assert sorted(os.listdir(workdir)) == before
  result = run_module("cliplite_jax.main", "--config=configs/default.py",
                      f"--workdir={tmp_path / 'new'}",
                      *tiny_overrides(tiny_data_dir),
                      f"--config.data.name={data}", "--config.batch_size=8",
                      "--config.data.train_split=test")
  assert result.returncode != 0 and "damaged prepared shard" in result.stderr
  assert not os.path.exists(tmp_path / "new")


def _tokenizer(config):
  return text_lib.fixed_length(text_lib.train_wordpiece(
      vocabulary.all_captions(config, "train"), 256), config.data.max_tokens)


def test_prepared_source_resumes_exactly_and_splits_over_processes(
    tiny, photo_set):
  tiny.data.name = photo_set
  tiny.batch_size = 4
  tiny.data.color_jitter_prob = 0.8
  tokenizer = _tokenizer(tiny)
  straight = iter(pipeline.train_dataset(tiny, tokenizer))
  batches = [next(straight) for _ in range(7)]  # crosses epochs of 2 batches
  interrupted = iter(pipeline.train_dataset(tiny, tokenizer))
  for _ in range(3):
    next(interrupted)
  resumed = iter(pipeline.train_dataset(tiny, tokenizer))
  resumed.set_state(interrupted.get_state())
  for expected in batches[3:]:
    got = next(resumed)
    for key in expected:
      np.testing.assert_array_equal(got[key], expected[key])
  # Two processes' rows, side by side, are the one-process batches.
  halves = [iter(pipeline.train_dataset(tiny, tokenizer, p, 2))
            for p in range(2)]
  for expected in batches[:4]:
    parts = [next(h) for h in halves]
    for key in expected:
      np.testing.assert_array_equal(
          np.concatenate([p[key] for p in parts]), expected[key])


@pytest.fixture
def model_setup(tiny):
  model = cliplite.build(tiny)
  variables = quick_init(
      model, {"params": jax.random.key(0), "prior": jax.random.key(1),
              "dropout": jax.random.key(2)},
      *state_lib.dummy_inputs(tiny), train=False)
  return model, variables


def test_folder_per_class_zero_shot_with_the_users_prompts(
    tiny, model_setup, tmp_path, photo_set):
  model, variables = model_setup
  groups = {"c0": ("astronaut", "rocket", "hubble_deep_field", "moon"),
            "c1": ("chelsea", "coffee", "flower"),
            "c2": ("camera", "coins", "motorcycle")}
  for folder, names in groups.items():
    os.makedirs(tmp_path / "classes" / folder)
    for name in names:
      (tmp_path / "classes" / folder / f"{name}.jpg").write_bytes(
          photos.jpeg(name))
  classes = ["space", "living thing", "machine"]
  templates = ["a photo of a {}.", "a close up picture of the {}"]
  (tmp_path / "names.txt").write_text("\n".join(classes) + "\n")
  (tmp_path / "prompts.txt").write_text("\n".join(templates) + "\n")
  out = str(tmp_path / "my_classes")
  card = prepare.run(prepare.Options(
      source=[f"train=folder:{tmp_path / 'classes'}",
              f"test=folder:{tmp_path / 'classes'}"], out=out,
      class_names=str(tmp_path / "names.txt"),
      templates=str(tmp_path / "prompts.txt")))
  assert card["class_names"] == classes and card["templates"] == templates
  words = [" ".join(classes + templates)]
  tokenizer = text_lib.fixed_length(text_lib.train_wordpiece(words, 256),
                                    tiny.data.max_tokens)
  tiny.eval.probes = ("zeroshot", "linear")
  tiny.data.name = photo_set  # a caption set: only the class set is scored
  tiny.eval.transfer = (out,)
  tiny.eval.linear.update(epochs=2, batch_size=4)
  got = evaluate.run_probes(tiny, model, variables, tokenizer,
                            parallel.make_mesh())
  assert {"zeroshot/my_classes/top1", "linear/my_classes/top1"} <= set(got)
  test = prepared.Examples(out, "test")
  examples = [test[i] for i in range(len(test))]
  labels = np.array([ex["label"] for ex in examples])
  assert sorted(np.bincount(labels)) == [3, 3, 4]
  prompts = [text_lib.clean_caption(t.format(c)) for c in classes
             for t in templates]
  prompt_emb = _direct_text(tiny, model, variables, tokenizer, prompts)
  class_emb = zeroshot.class_embeddings(prompt_emb.reshape(3, 2, -1))
  image_emb = _direct_image(tiny, model, variables, examples)[1]
  want = zeroshot.accuracy(image_emb, class_emb, labels, ks=(1,))["top1"]
  assert got["zeroshot/my_classes/top1"] == pytest.approx(float(want))


def test_imagenet_zero_shot_averages_clip_templates_over_its_class_names(
    tiny, model_setup, photo_set):
  model, variables = model_setup
  names, templates = sources.IMAGENET_CLASSES, sources.IMAGENET_TEMPLATES
  # CLIP's names repeat "missile" and "sunglasses" (distinct synsets).
  assert len(names) == 1000 and len(set(names)) == 998
  assert len(templates) == 80 and all("{}" in t for t in templates)
  assert names[0] == "tench" and templates[0] == "a bad photo of a {}."

  def imagenet(split):
    rng = np.random.default_rng(0)
    return [{"image": class_jpeg(rng, label, size=32), "label": np.int64(label),
             "file_name": f"{i}.JPEG"} for i, label in enumerate((1, 7, 999))]

  laclip = sources.IMAGENET_TEMPLATES_LACLIP
  assert len(laclip) == 7 and laclip[0] == "itap of a {}."
  words = [" ".join(names + templates + laclip)]
  tokenizer = text_lib.fixed_length(text_lib.train_wordpiece(words, 256),
                                    tiny.data.max_tokens)
  tiny.eval.probes = ("zeroshot",)
  tiny.eval.transfer = ("imagenet2012",)
  tiny.data.name = photo_set  # outside TFDS's mock; has no zero-shot
  tiny.eval.batch_size = 2000
  with fake_tfds({"imagenet2012": imagenet}):
    got = evaluate.run_probes(tiny, model, variables, tokenizer,
                              parallel.make_mesh())
  examples = imagenet("validation")
  image_emb = _direct_image(tiny, model, variables, examples)[1]
  # 80,000 prompts: one jitted program, not op-by-op.
  encode = jax.jit(lambda ids, mask: model.apply(
      variables, ids, mask, method=cliplite.CLIPLite.encode_text)[1])
  # CLIP's 80 templates, and LaCLIP's 7 as a second task.
  for key, task_templates in (("imagenet2012", templates),
                              ("imagenet2012_laclip", laclip)):
    prompts = [text_lib.clean_caption(t.format(c)) for c in names
               for t in task_templates]
    ids, mask = text_lib.tokenize(tokenizer, prompts)
    prompt_emb = np.concatenate([encode(ids[i:i + 8000], mask[i:i + 8000])
                                 for i in range(0, len(prompts), 8000)])
    class_emb = zeroshot.class_embeddings(
        prompt_emb.reshape(1000, len(task_templates), -1))
    want = zeroshot.accuracy(image_emb, class_emb,
                             np.array([ex["label"] for ex in examples]),
                             ks=(1, 5))
    assert got[f"zeroshot/{key}/top1"] == pytest.approx(float(want["top1"]))
    assert got[f"zeroshot/{key}/top5"] == pytest.approx(float(want["top5"]))


def test_a_class_set_is_refused_for_training_before_anything_is_written(
    tiny, tmp_path):
  from cliplite_jax import config_io
  from cliplite_jax.training import train
  os.makedirs(tmp_path / "classes" / "a")
  os.makedirs(tmp_path / "classes" / "b")
  for folder, name in (("a", "coffee"), ("b", "moon")):
    (tmp_path / "classes" / folder / f"{name}.jpg").write_bytes(
        photos.jpeg(name))
  out = str(tmp_path / "cls")
  prepare.run(prepare.Options(source=[f"folder:{tmp_path / 'classes'}"],
                              out=out))
  tiny.data.name = out
  tiny.eval.probes = ()
  workdir = tmp_path / "run"
  with pytest.raises(config_io.UserError, match="is a class set"):
    train.train_and_evaluate(tiny, str(workdir))
  assert not workdir.exists() or not os.listdir(workdir)


def test_a_stream_with_nothing_usable_stops_with_one_error():
  import grain
  stream = grain.MapDataset.source([pipeline.SKIPPED] * 5).repeat()
  ds = pipeline.SkipAndCount(stream.to_iter_dataset(), limit=5,
                             what="my_set train")
  with pytest.raises(pipeline.NoUsableExamplesError,
                     match="my_set train: 5 examples in a row"):
    next(iter(ds))


def test_a_split_smaller_than_a_batch_is_refused_before_anything_is_written(
    tiny, photo_set, tmp_path):
  from cliplite_jax import config_io
  from cliplite_jax.training import train
  tiny.data.name = photo_set  # 9 training photos
  tiny.batch_size = 16
  with pytest.raises(config_io.UserError,
                     match="has 9 training examples .* one batch of 16"):
    train.train_and_evaluate(tiny, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_prepared_paths_are_saved_absolute_and_named_clearly(
    photo_set, monkeypatch):
  parent, name = os.path.split(photo_set)
  monkeypatch.chdir(parent)
  assert sources.canonical(f"./{name}") == photo_set
  assert sources.canonical("coco_captions") == "coco_captions"
  assert sources.display_name(f"./{name}") == name
  with pytest.raises(ValueError, match=f"write ./{name}"):
    sources.get(name)


@pytest.mark.parametrize("fmt", ["csv", "webdataset", "tfds"])
def test_each_format_feeds_training_once_prepared(tiny, tiny_data_dir,
                                                  tmp_path, fmt):
  """CSV, webdataset and TFDS-keys sets give the train step its batches
  (JSONL's trains from the command line above; the step does not see the
  format)."""
  raw = tmp_path / "raw"
  if fmt == "csv":
    sources_ = [photos.write_csv(str(raw))]
    options = dict(image_column="filepath", caption_column="title")
  elif fmt == "webdataset":
    shards = photos.write_webdataset(str(raw))
    sources_ = [f"{split}={path}" for split, path in shards.items()]
    options = {}
  else:
    sources_ = ["train=tfds:shapes_captions/tiny"]
    options = dict(text_key="captions", data_dir=tiny_data_dir)
  out = str(tmp_path / f"my_{fmt}")
  prepare.run(prepare.Options(source=sources_, out=out, **options))
  tiny.data.name = out
  tiny.batch_size = 8
  tokenizer = _tokenizer(tiny)
  stream = iter(pipeline.train_dataset(tiny, tokenizer))
  for _ in range(3):  # more than an epoch of the photos
    batch = next(stream)
    assert batch["images"].shape == (8, 32, 32, 3)
    assert batch["images"].dtype == np.uint8 and batch["images"].std() > 10
    assert (batch["attention_mask"].sum(1) > 2).all()  # [CLS] words [SEP]
    np.testing.assert_array_equal(batch["skipped"], 0)
