"""The zero-shot classification benchmark: CLIP's datasets, class names and
prompt templates, and the suites `eval.suite` names.

Each set is a JSON file in data/benchmark/ (its class names in label order,
its templates, the TFDS builder and split that read it, and the source of
the lists: CLIP's published per-dataset lists). `sources.SOURCES` gains one
entry per set, scored by zero-shot with the templates averaged (CLIP's
recipe) and, where the set has a training split, by the linear and few-shot
probes. Sets TFDS cannot build carry "manual" (how to get them) instead of
a builder name, and a suite lists them as skipped.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json

# The sets `eval.suite` runs, by suite name. "clip_benchmark": every set
# of CLIP's zero-shot table that TFDS reads, with ImageNet's variants;
# "quick": four small ones (minutes on a CPU once prepared).
SUITES = {
    "clip_benchmark": (
        "cifar10", "cifar100", "food101", "oxford_iiit_pet",
        "oxford_flowers102", "dtd", "eurosat", "sun397", "cars196",
        "fgvc_aircraft", "caltech101", "stl10", "mnist", "gtsrb",
        "resisc45", "patch_camelyon", "country211", "imagenet2012",
        "imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"),
    "quick": ("cifar10", "cifar100", "stl10", "mnist"),
}
# The benchmark's file for a dataset known by another name here.
_FILE_OF = {"imagenet2012": "imagenet"}


@dataclasses.dataclass(frozen=True)
class BenchmarkSet:
  """One set of the benchmark, as its JSON file describes it."""
  key: str
  title: str
  tfds_name: str | None
  split: str
  image_key: str
  label_key: str
  classes: tuple[str, ...]
  templates: tuple[str, ...]
  source: str
  manual: str = ""
  relabel: tuple[int, ...] = ()
  fit_split: str | None = "train"


# Test-only sets: nothing to fit the linear and few-shot probes on.
_NO_TRAIN_SPLIT = ("imagenet_v2", "imagenet_sketch", "imagenet_a",
                   "imagenet_r")


def _relabel(indices: list[int]) -> tuple[int, ...]:
  """Dataset label → class index, for a set labelled in ImageNet's 1000
  classes whose class list is a subset (ImageNet-A and -R: 200); −1 for the
  classes outside it."""
  table = [-1] * 1000
  for position, index in enumerate(indices):
    table[index] = position
  return tuple(table)


def _read(key: str) -> BenchmarkSet:
  path = (importlib.resources.files("cliplite_jax.data") / "benchmark"
          / f"{_FILE_OF.get(key, key)}.json")
  entry = json.loads(path.read_text())
  return BenchmarkSet(
      key=key, title=entry["title"], tfds_name=entry.get("tfds_name"),
      split=entry["split"], image_key=entry.get("image_key") or "image",
      label_key=entry.get("label_key") or "label",
      classes=tuple(entry["classes"]), templates=tuple(entry["templates"]),
      source=entry["source"], manual=entry.get("manual") or "",
      relabel=_relabel(entry["imagenet_indices"])
      if "imagenet_indices" in entry else (),
      fit_split=None if key in _NO_TRAIN_SPLIT else "train")


@functools.cache
def all_sets() -> dict[str, BenchmarkSet]:
  """Every set of every suite, by the name it is evaluated under (read from
  the package once per process; callers do not modify it)."""
  keys = dict.fromkeys(k for suite in SUITES.values() for k in suite)
  return {key: _read(key) for key in keys}
