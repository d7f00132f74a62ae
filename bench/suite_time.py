r"""Wall time of the zero-shot benchmark suite (`eval.suite=quick`) with the
demo's model, per set and in all.

No benchmark set can be downloaded on a machine without internet, so the
sets are stand-ins served through `tfds.testing.mock_data` at the real
sizes of their scored splits (CIFAR-10 / CIFAR-100 / MNIST 10,000 images,
STL-10 8,000; 32 px JPEGs, 96 px for STL-10) with the real class lists and
templates, and fitting splits of `--train` images per set for the few-shot
probe. Timing does not depend on the weights: the model is the demo's at
its random initialisation, unless --workdir names a trained run (its
checkpoint is restored instead).

  python bench/suite_time.py [--workdir=/tmp/cliplite_demo] [--train=5000]
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from PIL import Image  # noqa: E402

from cliplite_jax import config_io, evaluate, run_dir  # noqa: E402
from cliplite_jax.data import benchmark_sets, text as text_lib  # noqa: E402
from cliplite_jax.training import parallel, state as state_lib  # noqa: E402
from configs import default  # noqa: E402

TEST_SIZES = {"cifar10": 10_000, "cifar100": 10_000, "stl10": 8_000,
              "mnist": 10_000}
PIXELS = {"stl10": 96, "mnist": 28}


def _jpeg(rng, label: int, size: int) -> bytes:
  hue = np.array([label * 37 % 256, label * 91 % 256, label * 53 % 256])
  pixels = np.clip(hue + rng.normal(0, 30, (size, size, 3)), 0, 255)
  buffer = io.BytesIO()
  Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG")
  return buffer.getvalue()


def _stand_in(key: str, num: int, classes: int):
  rng = np.random.default_rng(len(key) * 1000 + num)
  labels = rng.integers(0, classes, num)
  size = PIXELS.get(key, 32)
  return [{"image": _jpeg(rng, int(y), size), "label": np.int64(y)}
          for y in labels]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="")
  parser.add_argument("--train", type=int, default=5000,
                      help="fitting-split images per set (few-shot)")
  parser.add_argument("--probes", default="zeroshot,fewshot")
  args = parser.parse_args()

  mesh = parallel.make_mesh()
  if args.workdir:
    config = config_io.load_saved(args.workdir)
    _, model, variables, tokenizer, mesh = run_dir.restore(args.workdir,
                                                           config)
  else:
    config = default.get_config()
    model = state_lib.build_model(config)
    variables = jax.jit(lambda rng: model.init(
        {"params": rng, "prior": rng, "dropout": rng},
        *state_lib.dummy_inputs(config), train=False))(jax.random.key(0))
    words = [" ".join(c for k in TEST_SIZES
                      for c in benchmark_sets.all_sets()[k].classes)]
    tokenizer = text_lib.fixed_length(
        text_lib.train_wordpiece(words, config.model.text.vocab_size),
        config.data.max_tokens)
  config.data.name = "coco_captions"  # scored by none of these probes
  config.eval.probes = tuple(args.probes.split(","))
  config.eval.suite = "quick"
  print("building the stand-in sets ...", flush=True)
  sets = benchmark_sets.all_sets()
  data = {}
  for key, num in TEST_SIZES.items():
    classes = len(sets[key].classes)
    data[key] = {"test": _stand_in(key, num, classes),
                 "train": _stand_in(key + "_train", args.train, classes)}
  real = tfds.core.DatasetBuilder.as_data_source

  def as_data_source(self, split, decoders=None, **kwargs):
    if self.name not in data:
      return real(self, split, decoders=decoders, **kwargs)
    return data[self.name][split]

  start = time.perf_counter()
  with tfds.testing.mock_data(as_data_source_fn=as_data_source):
    metrics = evaluate.run_probes(config, model, variables, tokenizer, mesh)
  total = time.perf_counter() - start
  print(evaluate.format_table(0, metrics))
  print(f"suite quick ({', '.join(config.eval.probes)}; "
        f"{sum(TEST_SIZES.values())} scored images, {args.train} fitting "
        f"images per set) on {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s): {total:.1f} s")


if __name__ == "__main__":
  main()
