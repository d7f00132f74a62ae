r"""Input throughput at 224 px: our grain pipeline vs an equivalent tf.data one.

Both decode COCO-sized JPEGs (640×480), take a random resized crop to 224
(scale 0.2–1) resized with an antialiased bilinear filter (torchvision's),
apply colour jitter with probability 0.8 and a flip that swaps
"left"/"right", clean and tokenise one random caption to 30 tokens, and
batch. The grain side is `pipeline.train_dataset` itself, reading a mocked
TFDS source (no download), as the COCO config runs it: the crop decoded
only as far as it needs, the colour jitter's factors drawn on the host and
applied in the train step (`data.color_jitter_on_device`). tf.data runs the
same steps with `decode_and_crop_jpeg`, `tf.image` ops (jitter on the host)
and the same HF tokenizer; a third pipeline is tf.data with tf.image's
default, aliased resize (4 pixels per output), cheaper and not
torchvision's; a fourth is our pipeline with `data.resize="opencv"` (a
triangle prefilter and bilinear sampling: antialiased, not PIL's pixels).
All get the same number of threads and run interleaved in
this process; each reports images per wall-clock second and images per
CPU-second of the process (the per-core rate, whatever threads ran). First,
the CPU time per image of each host operation, old and new.

  python bench/input_pipeline.py [--threads=1] [--batches=30] [--rounds=2]
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from PIL import Image  # noqa: E402

from cliplite_jax import config_io  # noqa: E402
from cliplite_jax.data import pipeline  # noqa: E402
from cliplite_jax.data import text as text_lib  # noqa: E402

WORDS = ("a man woman dog cat sits stands on the left right of red blue "
         "table street with near holding").split()


def make_examples(n: int) -> list[dict]:
  """COCO-like examples as TFDS stores them: JPEG bytes and 5 captions."""
  rng = np.random.default_rng(0)
  examples = []
  for i in range(n):
    # Smooth random images compress like photos, unlike white noise.
    small = rng.integers(0, 256, (30, 40, 3), np.uint8)
    image = Image.fromarray(small).resize((640, 480), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    texts = [" ".join(rng.choice(WORDS, 10)).capitalize() + "." for _ in range(5)]
    examples.append({"image": buffer.getvalue(), "image/id": np.int64(i),
                     "captions": {"id": np.arange(5),
                                  "text": np.asarray([t.encode() for t in texts])}})
  return examples


def coco_setup(batch_size: int, threads: int, num_examples: int):
  """The COCO config's data settings (flip on, threads only), synthetic
  examples and a WordPiece tokenizer trained on their captions."""
  here = os.path.dirname(os.path.abspath(__file__))
  config = config_io.load_file(os.path.join(here, "..", "configs",
                                            "coco_rn50_bert.py"))
  config.batch_size = batch_size
  config.data.num_threads = threads
  config.data.num_workers = 0
  config.data.flip = True
  examples = make_examples(num_examples)
  tokenizer = text_lib.fixed_length(text_lib.train_wordpiece(
      [text_lib.clean_caption(t) for e in examples
       for t in e["captions"]["text"]], 1000), config.data.max_tokens)
  return config, examples, tokenizer


def bench_grain(config, tokenizer, examples, batches: int) -> float:
  def as_data_source(self, split, decoders=None, **kwargs):
    del self, split, decoders, kwargs
    return examples
  with tfds.testing.mock_data(as_data_source_fn=as_data_source):
    stream = iter(pipeline.train_dataset(config, tokenizer))
    next(stream)  # warm-up: threads started, first batch built
    return _timed(stream, batches, config.batch_size)


def bench_tfdata(config, tokenizer, examples, batches: int, threads: int,
                 antialias: bool = True) -> float:
  size = config.data.image_size
  images = tf.constant([e["image"] for e in examples])
  captions = tf.constant([e["captions"]["text"] for e in examples])

  def tokenize(text):
    ids, mask = text_lib.tokenize(tokenizer, [t.decode() for t in text])
    return ids, mask

  def transform(jpeg, texts):
    shape = tf.io.extract_jpeg_shape(jpeg)
    begin, crop, _ = tf.image.sample_distorted_bounding_box(
        shape, tf.zeros([0, 0, 4]), area_range=config.data.crop_scale,
        aspect_ratio_range=config.data.crop_ratio, max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    window = tf.stack([begin[0], begin[1], crop[0], crop[1]])
    image = tf.io.decode_and_crop_jpeg(jpeg, window, channels=3)
    # torchvision resizes with PIL's antialiased bilinear filter; tf.image's
    # default (antialias=False) samples 4 pixels per output and aliases.
    image = tf.image.resize(image, [size, size], "bilinear",
                            antialias=antialias) / 255.0
    b, c, s, h = config.data.color_jitter
    if tf.random.uniform([]) < config.data.color_jitter_prob:
      image = tf.image.random_brightness(image, b)
      image = tf.image.random_contrast(image, 1 - c, 1 + c)
      image = tf.image.random_saturation(image, 1 - s, 1 + s)
      image = tf.image.random_hue(image, h)
    text = texts[tf.random.uniform([], 0, tf.shape(texts)[0], tf.int32)]
    text = tf.strings.regex_replace(tf.strings.lower(text), r"[^\w\s]", " ")
    if tf.random.uniform([]) < 0.5:
      image = tf.image.flip_left_right(image)
      text = tf.strings.regex_replace(text, r"\bleft\b", "@@")
      text = tf.strings.regex_replace(text, r"\bright\b", "left")
      text = tf.strings.regex_replace(text, "@@", "right")
    image = tf.cast(tf.clip_by_value(image, 0, 1) * 255, tf.uint8)
    return image, text

  def tokenize_batch(image, text):
    ids, mask = tf.numpy_function(tokenize, [text], [tf.int32, tf.int32])
    return image, ids, mask

  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  ds = (tf.data.Dataset.from_tensor_slices((images, captions)).repeat()
        .shuffle(len(examples), seed=0)
        .map(transform, num_parallel_calls=threads)
        .batch(config.batch_size, drop_remainder=True)
        .map(tokenize_batch).prefetch(2).with_options(options))
  stream = iter(ds)
  next(stream)
  return _timed(stream, batches, config.batch_size)


def per_op_ms(config, tokenizer, examples, repeats: int = 3) -> dict:
  """CPU milliseconds per image of each host operation, old and new."""
  import simplejpeg
  from cliplite_jax.data import augment
  cfg = config.data
  jpegs = [e["image"] for e in examples[:64]]
  pixels = [np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs]
  crops = [augment.random_resized_crop(p, np.random.default_rng(i),
                                       cfg.image_size, tuple(cfg.crop_scale))
           for i, p in enumerate(pixels)]
  captions = [text_lib.clean_caption(e["captions"]["text"][0])
              for e in examples[:64]]
  ops = {
      "decode, PIL": lambda i: np.asarray(
          Image.open(io.BytesIO(jpegs[i])).convert("RGB")),
      "decode, simplejpeg": lambda i: simplejpeg.decode_jpeg(jpegs[i], "RGB"),
      "crop + resize of decoded pixels (reference)":
          lambda i: augment.random_resized_crop(
              pixels[i], np.random.default_rng(i), cfg.image_size,
              tuple(cfg.crop_scale)),
      "decode + crop + resize, fused (ours)":
          lambda i: augment.decode_random_resized_crop(
              jpegs[i], np.random.default_rng(i), cfg.image_size,
              tuple(cfg.crop_scale)),
      "decode + crop + resize, fused, opencv resize":
          lambda i: augment.decode_random_resized_crop(
              jpegs[i], np.random.default_rng(i), cfg.image_size,
              tuple(cfg.crop_scale), resize="opencv"),
      "colour jitter, PIL (host path)": lambda i: augment.color_jitter(
          crops[i], np.random.default_rng(i), *cfg.color_jitter, p=1.0),
      "colour jitter parameters (device path's host part)":
          lambda i: augment.color_jitter_params(
              np.random.default_rng(i), *cfg.color_jitter, p=1.0),
      "clean + tokenise one caption": lambda i: tokenizer.encode(
          text_lib.clean_caption(captions[i])),
  }
  out = {}
  for name, op in ops.items():
    best = float("inf")
    for _ in range(repeats):
      start = time.process_time()
      for i in range(len(jpegs)):
        op(i)
      best = min(best, (time.process_time() - start) / len(jpegs) * 1e3)
    out[name] = best
  return out


def _timed(stream, batches: int, batch_size: int) -> tuple[float, float]:
  """(images per wall second, images per CPU second of this process)."""
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(batches):
    next(stream)
  images = batches * batch_size
  return (images / (time.perf_counter() - wall),
          images / (time.process_time() - cpu))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--threads", type=int, default=1)
  parser.add_argument("--batches", type=int, default=30)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=2)
  args = parser.parse_args()
  tf.config.threading.set_inter_op_parallelism_threads(args.threads)
  tf.config.threading.set_intra_op_parallelism_threads(args.threads)
  config, examples, tokenizer = coco_setup(args.batch_size, args.threads, 256)
  for name, ms in per_op_ms(config, tokenizer, examples).items():
    print(f"  {name:52s} {ms:5.2f} ms per image (CPU)")
  opencv = config.copy_and_resolve_references()
  opencv.data.resize = "opencv"
  pipelines = {
      "grain": lambda: bench_grain(config, tokenizer, examples, args.batches),
      "grain, opencv resize": lambda: bench_grain(opencv, tokenizer, examples,
                                                  args.batches),
      "tf.data": lambda: bench_tfdata(config, tokenizer, examples,
                                      args.batches, args.threads),
      "tf.data, aliased resize": lambda: bench_tfdata(
          config, tokenizer, examples, args.batches, args.threads,
          antialias=False),
  }
  rates = {name: [] for name in pipelines}
  for _ in range(args.rounds):  # interleaved rounds
    for name, run in pipelines.items():
      wall, cpu = run()
      rates[name].append((wall, cpu))
      print(f"{name:24s} {wall:7.1f} img/s wall with {args.threads} "
            f"thread(s), {cpu:7.1f} img per CPU-second", flush=True)
  best = {k: tuple(max(r[i] for r in v) for i in range(2))
          for k, v in rates.items()}
  print(f"best of {args.rounds}:")
  for name, (wall, cpu) in best.items():
    print(f"  {name:24s} {cpu:6.1f} img/CPU-s ({wall:6.1f} img/s) | grain / "
          f"this per CPU-second = {best['grain'][1] / cpu:.2f}, wall = "
          f"{best['grain'][0] / wall:.2f}")


if __name__ == "__main__":
  main()
