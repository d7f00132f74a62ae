"""`shapes_captions`: the embedded image–caption set, built locally by TFDS.

Each image shows 1–3 coloured shapes (4 shapes × 4 colours; size, position) on
a light background and comes with 5 templated captions ("a small red circle to the left
of a large blue square") plus labels: the shapes present (multi-hot), and the
shape and colour of the largest object. A few shape–colour combinations never
appear in train or validation, only in test, so zero-shot and retrieval can be
read on unseen compositions. Everything is a pure function of the builder
config's seed, the split and the example index: no download, fully
deterministic.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import time

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
}
COLOR_NAMES = tuple(COLORS)
# (shape, colour) pairs that only the test split contains.
HELD_OUT = frozenset({("circle", "yellow"), ("square", "blue"),
                      ("triangle", "green"), ("diamond", "red")})
_NUMBER_WORDS = ("zero", "one", "two", "three")
_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
  """Sizes of the splits, image side and the generator seed."""
  image_size: int = 64
  num_train: int = 6000
  num_validation: int = 500
  num_test: int = 1000
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class _Object:
  shape: str
  color: str
  radius: float
  x: float
  y: float

  @property
  def size_word(self) -> str:
    return "large" if self.radius >= 0.2 else "small"

  def describe(self, with_size: bool = True) -> str:
    words = (self.size_word, self.color, self.shape) if with_size else (
        self.color, self.shape)
    return " ".join(words)


def _sample_objects(rng: np.random.Generator, split: str) -> list[_Object]:
  """Objects sorted largest first, non-overlapping, allowed for `split`.

  The largest object is clearly the largest (radius 0.2–0.3 of the side, the
  others 0.08–0.15), so "the largest shape" is unambiguous and visible at 64 px.
  """
  count = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
  radii = [rng.uniform(0.2, 0.3)]
  radii += sorted(rng.uniform(0.08, 0.15, size=count - 1), reverse=True)
  objects: list[_Object] = []
  for radius in radii:
    while True:
      shape = SHAPES[rng.integers(len(SHAPES))]
      color = COLOR_NAMES[rng.integers(len(COLOR_NAMES))]
      if split == "test" or (shape, color) not in HELD_OUT:
        break
    for _ in range(100):
      x, y = rng.uniform(radius, 1 - radius, size=2)
      if all(np.hypot(x - o.x, y - o.y) > radius + o.radius + 0.02
             for o in objects):
        objects.append(_Object(shape, color, float(radius), float(x), float(y)))
        break
  return objects


def _draw(objects: list[_Object], size: int,
          rng: np.random.Generator) -> np.ndarray:
  """Renders the objects; returns uint8 [size, size, 3]."""
  background = tuple(int(v) for v in rng.integers(225, 256, size=3))
  image = Image.new("RGB", (size, size), background)
  draw = ImageDraw.Draw(image)
  for o in objects:
    cx, cy, r = o.x * size, o.y * size, o.radius * size
    fill = COLORS[o.color]
    if o.shape == "circle":
      draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif o.shape == "square":
      s = r * 0.85
      draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    elif o.shape == "triangle":
      draw.polygon([(cx, cy - r), (cx - r, cy + 0.8 * r),
                    (cx + r, cy + 0.8 * r)], fill=fill)
    else:  # diamond
      draw.polygon([(cx, cy - r), (cx + 0.75 * r, cy), (cx, cy + r),
                    (cx - 0.75 * r, cy)], fill=fill)
  pixels = np.asarray(image, np.int16)
  noise = rng.integers(-6, 7, size=pixels.shape)
  return np.clip(pixels + noise, 0, 255).astype(np.uint8)


def _region(o: _Object) -> str:
  """"at the top left", "on the right", "in the middle", ..."""
  vertical = "top" if o.y < 1 / 3 else "bottom" if o.y > 2 / 3 else ""
  horizontal = "left" if o.x < 1 / 3 else "right" if o.x > 2 / 3 else ""
  if vertical:
    return f"at the {vertical} {horizontal}".rstrip()
  return f"on the {horizontal}" if horizontal else "in the middle"


def _relation(a: _Object, b: _Object) -> str:
  """Where `a` is relative to `b` (image y grows downwards)."""
  dx, dy = a.x - b.x, a.y - b.y
  if abs(dx) >= abs(dy):
    return "to the left of" if dx < 0 else "to the right of"
  return "above" if dy < 0 else "below"


def captions_for(objects: list[_Object]) -> list[str]:
  """The 5 templated captions of one image (objects sorted largest first)."""
  first, rest = objects[0], objects[1:]
  plain = [o.describe(with_size=False) for o in objects]
  if rest:
    spatial = f"a {rest[0].describe()} {_relation(rest[0], first)} a {first.describe()}"
  else:
    spatial = f"a {first.describe()} {_region(first)}"
  n = len(objects)
  others = (f" with {_NUMBER_WORDS[n - 1]} other shape{'s' if n > 2 else ''}"
            if rest else "")
  return [
      "a " + " and a ".join(o.describe() for o in objects),
      "a picture of a " + " and a ".join(o.shape for o in objects),
      spatial,
      f"{_NUMBER_WORDS[n]} shape{'s' if n > 1 else ''}: a " + ", a ".join(plain),
      f"the largest shape is a {plain[0]}{others}",
  ]


def make_example(config: ShapesConfig, split: str, index: int) -> dict:
  """One example as numpy/python values; pure in (config.seed, split, index)."""
  rng = np.random.default_rng([config.seed, _SPLIT_IDS[split], index])
  objects = _sample_objects(rng, split)
  present = np.zeros(len(SHAPES), np.uint8)
  for o in objects:
    present[SHAPES.index(o.shape)] = 1
  return {
      "image": _draw(objects, config.image_size, rng),
      "captions": captions_for(objects),
      "shapes_present": present,
      "largest_shape": SHAPES.index(objects[0].shape),
      "largest_color": COLOR_NAMES.index(objects[0].color),
      "num_objects": len(objects),
  }


class SeededSplits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A locally generated builder: train / validation / test of its config's
  `num_train` / `num_validation` / `num_test` examples, example `index` of
  a split being `make_example(config, split, index)` (a pure function)."""

  @staticmethod
  def make_example(config, split: str, index: int) -> dict:
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    cfg = self.builder_config
    sizes = {"train": cfg.num_train, "validation": cfg.num_validation,
             "test": cfg.num_test}
    return {split: self._generate_examples(split, n)
            for split, n in sizes.items()}

  def _generate_examples(self, split: str, num_examples: int):
    for index in range(num_examples):
      yield index, self.make_example(self.builder_config, split, index)


def build_locally(builder: tfds.core.DatasetBuilder,
                  announce: bool = True) -> None:
  """Prepares `builder` as ArrayRecord (a no-op when it is), TFDS's chatter
  about a "download" (there is none) kept out; `announce` prints a line
  before and the time after."""
  if builder.is_prepared():
    return
  if announce:
    print(f"building {builder.name}/{builder.builder_config.name} under "
          f"{builder.data_dir} (once)...", flush=True)
  start = time.perf_counter()
  tfds.disable_progress_bar()
  with contextlib.redirect_stdout(io.StringIO()):
    builder.download_and_prepare(file_format="array_record")
  if announce:
    print(f"built in {time.perf_counter() - start:.0f}s", flush=True)


class ShapesCaptions(SeededSplits):
  """Synthetic coloured shapes with 5 templated captions per image."""

  make_example = staticmethod(make_example)

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release.",
      "1.1.0": "One clearly largest object (radius 0.2-0.3); 1-3 objects "
               "drawn 40/35/25%.",
  }
  BUILDER_CONFIGS = [
      ShapesConfig(name="default", description="6000/500/1000 images, 64 px."),
      ShapesConfig(name="tiny", description="For tests: 256/64/128 images.",
                   num_train=256, num_validation=64, num_test=128),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 3)),
            "captions": tfds.features.Sequence(tfds.features.Text()),
            "shapes_present": tfds.features.Tensor(shape=(len(SHAPES),),
                                                   dtype=np.uint8),
            "largest_shape": tfds.features.ClassLabel(names=SHAPES),
            "largest_color": tfds.features.ClassLabel(names=COLOR_NAMES),
            "num_objects": tfds.features.Scalar(dtype=np.int32),
        }),
        supervised_keys=None,
        homepage="https://github.com/cliplite-jax/cliplite_jax",
    )


def prepare(data_dir: str | None, config_name: str = "default") -> None:
  """Builds `shapes_captions/<config_name>` as ArrayRecord under `data_dir`.

  A no-op when it is already prepared. Takes seconds for the default config.
  `data_dir` None or "": TFDS's default (~/tensorflow_datasets).
  """
  build_locally(ShapesCaptions(config=config_name, data_dir=data_dir or None))
