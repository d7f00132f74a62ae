"""Named datasets → TFDS name, feature keys, and how to prepare them."""
from __future__ import annotations

import dataclasses
import importlib.resources
import os
from typing import Callable

import numpy as np
import tensorflow_datasets as tfds

from cliplite_jax.data import (benchmark_sets, decode as image_decoder,
                               feature_sets, prepared, shapes, symile_xor)


class DatasetNotPreparedError(RuntimeError):
  """A TFDS dataset that must be prepared before training or evaluation."""


VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def _package_lines(name: str) -> tuple[str, ...]:
  text = (importlib.resources.files("cliplite_jax.data") / "zeroshot" / name
          ).read_text()
  return tuple(line for line in text.splitlines() if line.strip())


# CLIP's ImageNet class names and its 80 prompt templates (Radford et al.,
# 2021, the prompt-engineering notebook), averaged per class.
IMAGENET_CLASSES = _package_lines("imagenet_classes.txt")
IMAGENET_TEMPLATES = _package_lines("imagenet_templates.txt")
# LaCLIP's 7 for its CC3M/CC12M/RedCaps models (LijieFan/LaCLIP@7ddd516
# eval_zeroshot_imagenet.py; its LAION models use the 80): scored as the
# task "laclip", zeroshot/imagenet2012_laclip/top1.
IMAGENET_TEMPLATES_LACLIP = _package_lines("imagenet_templates_laclip.txt")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog",
                   "frog", "horse", "ship", "truck")


def voc_targets(example: dict) -> np.ndarray:
  """VOC's per-class targets, int32 [20]: 1 for a class with a non-difficult
  object, -1 for one with only difficult objects, 0 for an absent one."""
  targets = np.zeros(len(VOC_CLASSES), np.int32)
  targets[np.asarray(example["labels"], np.int64)] = -1
  targets[np.asarray(example["labels_no_difficult"], np.int64)] = 1
  return targets


def shapes_present(example: dict) -> np.ndarray:
  """shapes_captions' multi-hot "shapes present" as SVM targets, int32 [4]."""
  return np.asarray(example["shapes_present"], np.int32)


@dataclasses.dataclass(frozen=True)
class Source:
  """Where an image–caption dataset lives and how its features are named.

  Attributes:
    tfds_name: default TFDS name (with builder config) for this dataset.
    image_key: feature name of the (encoded) image.
    captions_key: path to the list of captions, e.g. ("captions", "text")
      for COCO's sequence of {id, text}; None for a classification set.
    id_key: feature that identifies an image across runs (keys of a caption
      rewrites file), or None to use the example's index in its split.
    zeroshot: {task: (label feature, class names, prompt template or a
      tuple of templates, averaged)} for zero-shot probes; the first task is
      the dataset's headline one.
    linear_label: the class-label feature the linear probe predicts from
      frozen image features, or None.
    svm_targets: example → int32 [K] targets of the VOC07 SVM probe (1
      present, 0 absent, -1 difficult), or None.
    eval_split: the split probes are scored on when this is a transfer
      dataset (for the training dataset, `config.eval.split`).
    fit_split: the split the SVM and linear probes are trained on (for the
      training dataset, `config.eval.fit_split`).
    prepare: builds the dataset locally (embedded sets), or None when it must
      be prepared by the user (`tfds build`).
    build_flags: extra `tfds build` flags the error message suggests, e.g.
      for a manual download.
    modalities: the vector-valued features of a multi-modality set (no
      image: `image_key` None), scored by predicting each from the others.
    relabel: for a set labelled in a larger class list than the one it is
      scored on (ImageNet-A and -R: ImageNet's 1000 labels, 200 classes),
      label → class index; empty: labels are class indices.
    title: the set's name in tables ("" for the name it is evaluated under).
  """
  tfds_name: str
  image_key: str | None = "image"
  captions_key: tuple[str, ...] | None = ("captions",)
  id_key: str | None = None
  zeroshot: dict = dataclasses.field(default_factory=dict)
  linear_label: str | None = None
  svm_targets: Callable[[dict], np.ndarray] | None = None
  eval_split: str = "test"
  fit_split: str = "train"
  prepare: Callable[[str | None, str], None] | None = None
  build_flags: str = ""
  modalities: tuple[str, ...] = ()
  relabel: tuple[int, ...] = ()
  title: str = ""

  @property
  def probes(self) -> frozenset[str]:
    """The probes this dataset can be scored with."""
    from cliplite_jax.probes import registry  # jax, only when asked
    return frozenset(name for name, probe in registry.PROBES.items()
                     if probe.supports(self))

  def labels(self, example: dict) -> dict[str, np.ndarray]:
    """The example's probe labels: int32 [] per zero-shot or linear label
    feature, and "svm_targets" int32 [K]."""
    keys = {key for key, _, _ in self.zeroshot.values()}
    keys |= {self.linear_label} if self.linear_label else set()
    out = {key: np.int32(self.relabel[example[key]] if self.relabel
                         else example[key]) for key in sorted(keys)}
    if self.svm_targets:
      out["svm_targets"] = self.svm_targets(example)
    return out


SOURCES = {
    "shapes_captions": Source(
        tfds_name="shapes_captions/default",
        zeroshot={
            "shape": ("largest_shape", shapes.SHAPES, "a picture of a {}."),
            "color": ("largest_color", shapes.COLOR_NAMES,
                      "a picture of a {} shape."),
        },
        linear_label="largest_color",
        svm_targets=shapes_present,
        prepare=shapes.prepare),
    # Karpathy splits: train (82,783) + restval (30,504) for training, test
    # and val (5,000 each) for evaluation.
    "coco_captions": Source(
        tfds_name="coco_captions/2014",
        captions_key=("captions", "text"),
        id_key="image/id"),
    # Symile's synthetic higher-order set (configs p000 ... p100, tiny).
    "symile_xor": Source(
        tfds_name="symile_xor/p100", image_key=None, captions_key=None,
        eval_split="test", modalities=symile_xor.MODALITIES,
        prepare=symile_xor.prepare),
    # Transfer sets for the paper's protocols.
    "voc": Source(tfds_name="voc/2007", captions_key=None,
                  svm_targets=voc_targets, fit_split="train+validation"),
    "cifar10": Source(
        tfds_name="cifar10", captions_key=None, linear_label="label",
        zeroshot={"class": ("label", CIFAR10_CLASSES, "a picture of a {}.")}),
    "imagenet2012": Source(
        tfds_name="imagenet2012", captions_key=None, linear_label="label",
        zeroshot={"class": ("label", IMAGENET_CLASSES, IMAGENET_TEMPLATES),
                  "laclip": ("label", IMAGENET_CLASSES,
                             IMAGENET_TEMPLATES_LACLIP)},
        eval_split="validation",
        build_flags=" --manual_dir=DIR_WITH_ILSVRC2012_TARS"),
}


def _with_benchmark(known: dict[str, Source]) -> dict[str, Source]:
  """`known` and the zero-shot benchmark's sets (`benchmark_sets`): each
  scored with CLIP's class names and templates, and where it has a
  training split, by the linear and few-shot probes. A set already known
  (CIFAR-10, whose headline zero-shot is the paper's single template) gains
  CLIP's as a second task, "clip"; ImageNet's are already CLIP's."""
  out = dict(known)
  for key, entry in benchmark_sets.all_sets().items():
    task = (entry.label_key, entry.classes, entry.templates)
    if key in out:
      zeroshot = out[key].zeroshot
      if zeroshot["class"][1:] != task[1:]:
        zeroshot = {**zeroshot, "clip": task}
      out[key] = dataclasses.replace(out[key], zeroshot=zeroshot,
                                     title=entry.title)
      continue
    if entry.tfds_name is None:
      continue  # not in TFDS: `prepare` it as a class-folder set
    out[key] = Source(
        tfds_name=entry.tfds_name, image_key=entry.image_key,
        captions_key=None, zeroshot={"class": task},
        linear_label=entry.label_key if entry.fit_split else None,
        eval_split=entry.split, fit_split=entry.fit_split or "train",
        relabel=entry.relabel, title=entry.title)
  return out


SOURCES = _with_benchmark(SOURCES)


def get(name: str) -> tuple[Source, str]:
  """`name` is "dataset" or "dataset/builder_config" → (Source, TFDS name),
  or the path of a prepared dataset → (Source, path), or a feature set
  "features:PATH" (`feature_sets`) → (Source, name).

  Raises ValueError for an unknown name, DatasetNotPreparedError for a path
  that holds no prepared dataset.
  """
  if feature_sets.is_name(name):
    return Source(tfds_name=name, image_key=None, captions_key=None,
                  modalities=feature_sets.modalities(name)), name
  if prepared.is_prepared_name(name):
    return from_card(name), name
  base, _, builder_config = name.partition("/")
  if base not in SOURCES:
    hint = (f" (for the prepared dataset in directory {name!r}, write "
            f"./{name})" if os.path.isdir(name) else
            "; a prepared dataset is named by its path (/..., ./..., ~/..., "
            "gs://...)")
    raise ValueError(f"unknown dataset {name!r}; known: {sorted(SOURCES)}"
                     f"{hint}")
  source = SOURCES[base]
  tfds_name = f"{base}/{builder_config}" if builder_config else source.tfds_name
  return source, tfds_name


def from_card(name: str) -> Source:
  """The Source of the prepared dataset at path `name` (see prepared.py):
  a caption set is scored with retrieval and the modality gap, a class set
  with zero-shot (its class names and prompt templates, averaged) and the
  linear probe."""
  try:
    card = prepared.read_card(name)
  except FileNotFoundError as e:
    raise DatasetNotPreparedError(str(e)) from e
  splits = card["splits"]
  eval_split = next((s for s in ("test", "validation", "val") if s in splits),
                    "train")
  common = dict(tfds_name=name, id_key="key", eval_split=eval_split,
                fit_split="train")
  if card["kind"] == "classes":
    return Source(captions_key=None, linear_label="label",
                  zeroshot={"class": ("label", tuple(card["class_names"]),
                                      tuple(card["templates"]))}, **common)
  return Source(**common)


def canonical(name: str) -> str:
  """A prepared dataset's local path made absolute (a run's saved config
  then works from any directory); other names as they are."""
  if prepared.is_prepared_name(name) and "://" not in name:
    return os.path.abspath(os.path.expanduser(name))
  if feature_sets.is_name(name):
    return feature_sets.PREFIX + feature_sets.location(name)
  return name


def canonical_datasets(config) -> None:
  """`canonical` applied to `config.data.name` and `config.eval.transfer`,
  before a config is compared with or saved as WORKDIR/config.json, or
  evaluated."""
  config.data.name = canonical(config.data.name)
  config.eval.transfer = tuple(canonical(n)
                               for n in config.eval.get("transfer", ()))


def display_name(name: str) -> str:
  """The dataset's name in metric keys: "coco_captions" for
  "coco_captions/2014", a prepared dataset's directory name for its path
  (a feature set's too)."""
  if feature_sets.is_name(name):
    return os.path.basename(feature_sets.location(name))
  if prepared.is_prepared_name(name):
    return os.path.basename(str(prepared.resolve(name)).rstrip("/"))
  return name.partition("/")[0]


def open_split(name: str, split: str, data_dir: str | None):
  """A random-access data source for `split`, preparing embedded sets.

  Raises DatasetNotPreparedError (naming the fix) for a dataset that is not
  prepared under `data_dir` and cannot be built locally; ValueError for a
  split the dataset does not have (or a feature set's FeatureSetError).
  """
  if feature_sets.is_name(name):
    return feature_sets.FeatureSplit(name, split)
  if prepared.is_prepared_name(name):
    try:
      return prepared.Examples(name, split)
    except (FileNotFoundError, prepared.DamagedShardError) as e:
      raise DatasetNotPreparedError(str(e)) from e
  source, tfds_name = get(name)
  data_dir = data_dir or None
  if source.prepare is not None:
    if not tfds.builder(tfds_name, data_dir=data_dir).is_prepared():
      source.prepare(data_dir, tfds_name.partition("/")[2] or "default")
  try:
    # Images stay encoded: `decode` decodes them, so a corrupt file is
    # skipped there instead of failing inside TFDS.
    return tfds.data_source(
        tfds_name, split=split, data_dir=data_dir, download=False,
        decoders=({source.image_key: tfds.decode.SkipDecoding()}
                  if source.image_key else None))
  except (KeyError, ValueError, AssertionError, NotImplementedError) as e:
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    fix = (f"`tfds build {tfds_name} --file_format=array_record "
           f"--data_dir={where}{source.build_flags}` (or set "
           f"--config.data.data_dir)")
    if not builder.is_prepared():
      raise DatasetNotPreparedError(
          f"dataset {tfds_name} is not prepared under {where}: run "
          f"{fix}") from e
    if isinstance(e, NotImplementedError):  # e.g. prepared as TFRecord
      raise DatasetNotPreparedError(
          f"dataset {tfds_name} under {where} is not in a random-access "
          f"format: rebuild it with {fix}") from e
    raise ValueError(f"dataset {tfds_name} cannot read split {split!r} "
                     f"(it has {sorted(builder.info.splits)}): {e}") from e


def image_id(source: Source, index: int, example: dict) -> str:
  """The key of an example's image in a rewrites file (`data.rewrites`):
  its `id_key` feature, or its index in the split."""
  if source.id_key is None:
    return str(index)
  value = example[source.id_key]
  if isinstance(value, bytes):
    value = value.decode("utf-8")
  return value if isinstance(value, str) else str(int(value))


def decode_captions(source: Source, example: dict) -> list:
  """The example's non-empty raw captions (bytes or str); none for a
  classification set."""
  if source.captions_key is None:
    return []
  captions = example
  for key in source.captions_key:
    captions = captions[key]
  return [c for c in captions if len(c.strip()) > 0]


def decode(source: Source, example: dict) -> tuple[np.ndarray | None, list]:
  """An example read by `open_split` → (image uint8 [H, W, 3], captions).

  The image is decoded as training and inference decode it (`decode.decode`:
  EXIF orientation applied, 16-bit grey reduced to 8 bits), or None when its
  bytes do not decode; the captions are the non-empty raw captions (bytes or
  str), possibly none.
  """
  captions = decode_captions(source, example)
  try:
    pixels = image_decoder.decode(example[source.image_key])
  except image_decoder.DECODE_ERRORS:
    return None, captions
  return pixels, captions
