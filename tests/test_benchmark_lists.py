"""The zero-shot benchmark's class names and prompt templates
(cliplite_jax/data/benchmark/*.json): complete, with the published counts,
and in the label order of the TFDS builders that read them."""
import importlib.resources
import json
import re

import pytest

# (classes, templates) per file, as published: openai/CLIP data/prompts.md
# (one section per dataset) and, for ImageNet and its variants,
# notebooks/Prompt_Engineering_for_ImageNet.ipynb (1000 classes, 80
# templates); ImageNet-A and -R keep 200 of the 1000 classes
# (hendrycks/natural-adv-examples, hendrycks/imagenet-r).
EXPECTED = {
    "cifar10": (10, 18),
    "cifar100": (100, 18),
    "food101": (101, 1),
    "oxford_iiit_pet": (37, 1),
    "oxford_flowers102": (102, 1),
    "dtd": (47, 8),
    "eurosat": (10, 3),
    "sun397": (397, 2),
    "cars196": (196, 8),
    "fgvc_aircraft": (100, 2),
    "caltech101": (102, 34),
    "stl10": (10, 2),
    "mnist": (10, 1),
    "gtsrb": (43, 3),
    "resisc45": (45, 18),
    "patch_camelyon": (2, 1),
    "country211": (211, 5),
    "imagenet": (1000, 80),
    "imagenet_v2": (1000, 80),
    "imagenet_sketch": (1000, 80),
    "imagenet_a": (200, 80),
    "imagenet_r": (200, 80),
}
# CLIP's ImageNet names repeat two ("missile" 657/744, "sunglasses"
# 836/837); no other list has a duplicate.
DUPLICATES = {"imagenet": 2, "imagenet_v2": 2, "imagenet_sketch": 2}
# Sets TFDS 4.9.10 has no builder for.
NO_TFDS = {"fgvc_aircraft", "gtsrb", "country211"}
REQUIRED = ("key", "title", "tfds_name", "split", "image_key", "label_key",
            "classes", "templates", "source", "notes")


def _dir():
  return importlib.resources.files("cliplite_jax.data") / "benchmark"


def _load(key):
  return json.loads((_dir() / f"{key}.json").read_text(encoding="utf-8"))


def _zeroshot(name):
  text = (importlib.resources.files("cliplite_jax.data") / "zeroshot"
          / name).read_text(encoding="utf-8")
  return [line for line in text.split("\n") if line]


def test_one_file_per_set():
  names = sorted(p.name for p in _dir().iterdir() if p.name.endswith(".json"))
  assert names == sorted(f"{key}.json" for key in EXPECTED)


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_file(key):
  entry = _load(key)
  for field in REQUIRED:
    assert field in entry, field
  assert entry["key"] == key
  assert entry["title"] and entry["source"] and entry["notes"]
  if key in NO_TFDS:
    assert entry["tfds_name"] is None and entry["manual"]
  else:
    assert entry["tfds_name"] and not entry.get("manual")
    assert entry["image_key"] and entry["label_key"] and entry["split"]
  classes, templates = entry["classes"], entry["templates"]
  assert (len(classes), len(templates)) == EXPECTED[key]
  assert all(isinstance(c, str) and c for c in classes)
  for template in templates:
    assert template.count("{}") == 1, template
    assert "{" not in template.replace("{}", "") and "}" not in template.replace("{}", "")
  assert len(set(templates)) == len(templates)
  assert len(classes) - len(set(classes)) == DUPLICATES.get(key, 0)
  if key in ("imagenet_a", "imagenet_r"):
    indices = entry["imagenet_indices"]
    assert len(indices) == 200 and len(set(indices)) == 200
    assert all(type(i) is int and 0 <= i < 1000 for i in indices)
    assert indices == sorted(indices)
    imagenet = _load("imagenet")
    assert classes == [imagenet["classes"][i] for i in indices]
    assert templates == imagenet["templates"]
  else:
    assert "imagenet_indices" not in entry


def test_imagenet_is_clips_lists():
  entry = _load("imagenet")
  assert entry["classes"] == _zeroshot("imagenet_classes.txt")
  assert entry["templates"] == _zeroshot("imagenet_templates.txt")
  for key in ("imagenet_v2", "imagenet_sketch"):
    other = _load(key)
    assert (other["classes"], other["templates"]) == (
        entry["classes"], entry["templates"])


# How TFDS's label name i reads as CLIP's class i, where it does (the
# others: names TFDS only sets at download time, wnids, or CLIP's renames).
_SAME_NAMES = {
    "food101": lambda n: n.replace("_", " "),
    "oxford_iiit_pet": lambda n: n.replace("_", " "),
    "dtd": lambda n: n,
    "cars196": lambda n: n,
    "mnist": lambda n: n,
    "resisc45": lambda n: n.replace("_", " "),
    "sun397": lambda n: re.sub(r"^/[a-z]/", "", n).replace("_", " ").replace("/", " "),
}


@pytest.fixture(scope="module")
def tfds_labels(tmp_path_factory):
  """{key: TFDS's label names}, from the builders' info (offline)."""
  tfds = pytest.importorskip("tensorflow_datasets")
  data_dir = str(tmp_path_factory.mktemp("no_tfds_data"))
  labels = {}
  for key in EXPECTED:
    entry = _load(key)
    if entry["tfds_name"] is None:
      continue
    builder = tfds.builder(entry["tfds_name"], data_dir=data_dir, try_gcs=False)
    feature = builder.info.features[entry["label_key"]]
    if isinstance(feature, tfds.features.Sequence):  # VOC's multi-label
      feature = feature.feature
    labels[key] = list(feature.names)
  return labels


@pytest.mark.parametrize("key", sorted(set(EXPECTED) - NO_TFDS))
def test_tfds_label_order(key, tfds_labels):
  entry, names = _load(key), tfds_labels[key]
  if "imagenet_indices" in entry:  # TFDS labels these in ImageNet's 1000
    assert len(names) == 1000
  else:
    assert len(names) == len(entry["classes"])
  if key in _SAME_NAMES:
    assert [_SAME_NAMES[key](n) for n in names] == entry["classes"]
  if key == "caltech101":  # all but CLIP's 13 renamed classes
    same = [c == n.replace("_", " ") for c, n in zip(entry["classes"], names)]
    assert sum(same) == 102 - 13
  if key == "oxford_flowers102":  # all but CLIP's 3 renamed classes
    assert sum(c != n for c, n in zip(entry["classes"], names)) == 3
