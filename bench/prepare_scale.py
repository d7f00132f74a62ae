r"""How `cliplite_jax.prepare` and opening a prepared set scale with size.

Prepare: a synthetic collection of N examples — N image files (COCO-like
640×480 JPEGs, drawn from a pool of 64 distinct ones) and a JSONL captions
file whose 5 rows per image are shuffled through the file — is prepared at
two sizes with the same flags; reported are wall time, examples/s and the
peak resident memory of the whole process tree (the command and its
workers, sampled every 50 ms). Bounded memory shows as a peak that does not
grow with N.

Open: a prepared set of M examples (tiny records written directly, 2,000
shards) is opened as training opens it (`prepared.Examples`), at two sizes;
reported are the open time, the first random read, and peak RSS.

Each size's collection is prepared by each of `--runners` in turn (prepare's
local pool, Beam's DirectRunner), with examples per CPU-second of the whole
process tree beside the wall time.

  python bench/prepare_scale.py [--sizes=20000,100000] [--open_sizes=1000000,10000000] [--runners=local,direct]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
from PIL import Image  # noqa: E402

WORDS = ("a man woman dog cat sits stands on the left right of red blue "
         "table street with near holding").split()


def make_collection(root: str, n: int) -> str:
  """N JPEG files under root/img and root/captions.jsonl (5 rows each,
  shuffled); returns the captions file."""
  rng = np.random.default_rng(0)
  pool = []
  for _ in range(64):
    pixels = rng.integers(0, 256, (60, 80, 3), np.uint8)
    image = Image.fromarray(pixels).resize((640, 480), Image.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    pool.append(out.getvalue())
  os.makedirs(os.path.join(root, "img"), exist_ok=True)
  for i in range(n):
    sub = os.path.join(root, "img", f"{i // 10000:03d}")
    if i % 10000 == 0:
      os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, f"{i}.jpg"), "wb") as f:
      f.write(pool[i % 64])
  order = rng.permutation(5 * n)
  path = os.path.join(root, "captions.jsonl")
  with open(path, "w") as f:
    for row in order:
      i = int(row) // 5
      caption = " ".join(rng.choice(WORDS, 10))
      f.write(json.dumps({"image": f"img/{i // 10000:03d}/{i}.jpg",
                          "caption": caption}) + "\n")
  return path


def peak_tree_rss(process: subprocess.Popen) -> tuple[int, float]:
  """Waits for `process`; returns (peak RSS of it and its children in
  bytes, wall seconds)."""
  start, peak = time.time(), 0
  root = psutil.Process(process.pid)
  while process.poll() is None:
    try:
      tree = [root] + root.children(recursive=True)
      peak = max(peak, sum(p.memory_info().rss for p in tree))
    except psutil.Error:
      pass
    time.sleep(0.05)
  return peak, time.time() - start


def bench_prepare(sizes: list[int], workers: int,
                  runners: list[str]) -> list[dict]:
  """Each size's collection made once and prepared by each runner in turn
  (the same flags): wall time, examples/s, examples per CPU-second of the
  whole process tree (per core), peak RSS."""
  results = []
  for n in sizes:
    tmp = tempfile.mkdtemp(prefix="prepare_scale_")
    try:
      captions = make_collection(os.path.join(tmp, "raw"), n)
      for runner in runners:
        out = f"{tmp}/out_{runner}"
        command = [sys.executable, "-m", "cliplite_jax.prepare",
                   f"--source={captions}", f"--out={out}",
                   "--split_fractions=test=0.01", f"--num_workers={workers}",
                   f"--runner={runner}"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        process = subprocess.Popen(command, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True,
                                   cwd=os.path.join(os.path.dirname(__file__),
                                                    ".."))
        peak, seconds = peak_tree_rss(process)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime
               + after.ru_stime - before.ru_stime)
        assert process.returncode == 0, process.stdout.read()
        with open(f"{out}/dataset_card.json") as f:
          card = json.load(f)
        prepared = sum(s["examples"] for s in card["splits"].values())
        assert prepared == n, (prepared, n)
        results.append({"runner": runner, "examples": n,
                        "seconds": round(seconds, 1),
                        "examples_per_s": round(n / seconds),
                        "cpu_seconds": round(cpu, 1),
                        "examples_per_cpu_s": round(n / cpu),
                        "peak_rss_mib": round(peak / 2**20)})
        print(results[-1], flush=True)
        shutil.rmtree(out, ignore_errors=True)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  return results


_OPEN = r"""
import sys, time, resource, json
sys.path.insert(0, {repo!r})
start = time.time()
from cliplite_jax.data import prepared
imported = time.time()
examples = prepared.Examples({path!r}, "train")
opened = time.time()
n = len(examples)
record = examples[n - 12345]
read = time.time()
print(json.dumps({{"examples": n, "import_s": imported - start,
                  "open_s": opened - imported, "first_read_s": read - opened,
                  "peak_rss_mib": resource.getrusage(
                      resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def write_synthetic_prepared(path: str, n: int, shards: int = 2000) -> None:
  """A prepared set of n tiny records (a 64-byte "image") in `shards`."""
  from array_record.python.array_record_module import ArrayRecordWriter
  from cliplite_jax.data import prepared
  os.makedirs(path, exist_ok=True)
  per = -(-n // shards)
  entries = []
  for s in range(shards):
    count = max(0, min(per, n - s * per))
    name = f"train-{s:05d}-of-{shards:05d}.array_record"
    writer = ArrayRecordWriter(os.path.join(path, name), "group_size:1")
    for i in range(count):
      writer.write(prepared.encode_record(f"{s}/{i}", b"\0" * 64,
                                          ["a caption"]))
    writer.close()
    shard = os.path.join(path, name)
    entries.append({"file": name, "examples": count,
                    "bytes": os.path.getsize(shard),
                    "crc32": prepared.file_crc32(shard)})
  card = {"format": prepared.FORMAT, "version": prepared.VERSION,
          "kind": "captions", "sources": ["synthetic"],
          "splits": {"train": {"examples": n, "captions": n,
                               "shards": entries}},
          "skipped": {"counts": {}, "examples": []}}
  with open(os.path.join(path, prepared.CARD), "w") as f:
    json.dump(card, f)


def bench_open(sizes: list[int]) -> list[dict]:
  repo = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
  results = []
  for n in sizes:
    tmp = tempfile.mkdtemp(prefix="open_scale_")
    try:
      start = time.time()
      write_synthetic_prepared(tmp, n)
      written = time.time() - start
      subprocess.run(["sync"], check=False)
      out = subprocess.run(
          [sys.executable, "-c", _OPEN.format(repo=repo, path=tmp)],
          capture_output=True, text=True, check=True).stdout
      result = json.loads(out.strip().splitlines()[-1])
      result = {k: round(v, 3) if isinstance(v, float) else v
                for k, v in result.items()}
      result["write_s"] = round(written, 1)
      results.append(result)
      print(result, flush=True)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  return results


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--sizes", default="20000,100000")
  parser.add_argument("--open_sizes", default="1000000,10000000")
  parser.add_argument("--workers", type=int, default=os.cpu_count())
  parser.add_argument("--runners", default="local",
                      help="prepare's --runner values to compare on each "
                           "size's collection, e.g. local,direct")
  args = parser.parse_args()
  print(f"{os.cpu_count()} cores")
  prepare = bench_prepare([int(s) for s in args.sizes.split(",") if s],
                          args.workers, args.runners.split(","))
  opened = bench_open([int(s) for s in args.open_sizes.split(",") if s])
  print(json.dumps({"prepare": prepare, "open": opened}, indent=1))


if __name__ == "__main__":
  main()
