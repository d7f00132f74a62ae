r"""Does the input pipeline keep up with a GPU? The train loop with the step
replaced by a sleep of the H200's measured step time.

The COCO config's pipeline (224 px, crop scale 0.2–1, colour jitter p 0.8
drawn for the device, flip with caption swap, 30 tokens), global batch 128,
on COCO-sized synthetic JPEGs (bench/input_pipeline.py's, a mocked TFDS
source), feeds a loop that waits for each batch as `train.py` does
(`metrics.Progress.waited`) and then sleeps `--step_ms` (41 ms: the
RN50 + BERT-base bf16 step on one H200, BENCHMARKS.md) in place of the
step. Reported per thread / worker-process count: `data/wait_frac` as
training logs it, images/s, and images per CPU-second of the process and
its workers — from which the cores one accelerator needs at `--target`
images/s.

  python bench/data_wait.py [--threads=1,2] [--workers=2] [--steps=30] [--step_ms=41]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import psutil  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from cliplite_jax.training import metrics  # noqa: E402
from cliplite_jax.data import pipeline  # noqa: E402
from input_pipeline import coco_setup  # noqa: E402


def _cpu_seconds() -> float:
  """CPU time of this process and its live children (grain workers)."""
  me = psutil.Process()
  total = sum(me.cpu_times()[:2])
  for child in me.children(recursive=True):
    try:
      total += sum(child.cpu_times()[:2])
    except psutil.Error:
      pass
  return total


def measure(config, tokenizer, examples, steps: int, step_s: float) -> dict:
  def as_data_source(self, split, decoders=None, **kwargs):
    del self, split, decoders, kwargs
    return examples
  with tfds.testing.mock_data(as_data_source_fn=as_data_source):
    stream = iter(pipeline.train_dataset(config, tokenizer))
    next(stream)  # threads started, buffers filling: as after compiling
    time.sleep(2 * step_s)
    progress = metrics.Progress(0, steps, config.batch_size)
    cpu = _cpu_seconds()
    for _ in range(steps):
      waiting = time.perf_counter()
      next(stream)
      progress.waited(time.perf_counter() - waiting)
      time.sleep(step_s)  # the accelerator's step; the host is idle
    cpu = _cpu_seconds() - cpu
    timing = progress.update(steps)
  return {"wait_frac": timing["data_wait_frac"],
          "img_per_s": timing["img_per_s"],
          "img_per_cpu_s": steps * config.batch_size / cpu}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--threads", default="1,2",
                      help="data.num_threads values (no worker processes)")
  parser.add_argument("--workers", default="2",
                      help="data.num_workers values (each with 1 thread)")
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--step_ms", type=float, default=41.0)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--target", type=float, default=3000.0)
  args = parser.parse_args()
  config, examples, tokenizer = coco_setup(args.batch_size, 1, 512)
  print(f"{os.cpu_count()} cores; step {args.step_ms} ms, batch "
        f"{args.batch_size}: the accelerator alone would run "
        f"{args.batch_size / args.step_ms * 1000:.0f} images/s")
  settings = [(int(t), 0) for t in args.threads.split(",") if t]
  settings += [(1, int(w)) for w in args.workers.split(",") if w]
  for threads, workers in settings:
    config.data.num_threads, config.data.num_workers = threads, workers
    got = measure(config, tokenizer, examples, args.steps,
                  args.step_ms / 1000)
    cores = args.target / got["img_per_cpu_s"]
    print(f"threads {threads}, workers {workers}: data/wait_frac "
          f"{got['wait_frac']:.2f}, {got['img_per_s']:.0f} img/s, "
          f"{got['img_per_cpu_s']:.0f} img per CPU-second → {cores:.1f} "
          f"cores per accelerator at {args.target:.0f} img/s", flush=True)


if __name__ == "__main__":
  main()
