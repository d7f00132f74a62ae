"""The units of work of `cliplite_jax.prepare`: partitioning captions files,
converting one unit into ArrayRecord shards, and the dataset card."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import posixpath
import resource
import shutil
import signal
import sys
import threading
import time
import uuid

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter
from etils import epath

from cliplite_jax.data import formats, prepared, readers

# Words-per-caption histogram bins; the last holds this many or more.
MAX_WORDS_BIN = 100
# How many unusable examples the card names (all are counted).
PROBLEMS_SHOWN = 20

_counter = None


@dataclasses.dataclass
class Unit:
  """One independent piece of work: kind "rows" (a bucket file of a
  captions file), "webdataset" (a tar) or "tfds" (a slice of a split)."""
  kind: str
  args: dict


def set_counter(counter) -> None:
  """Installs the shared examples-converted counter (progress line)."""
  global _counter
  _counter = counter


def init_worker(counter, parent: int) -> None:
  """A pool worker: the shared counter, Ctrl-C left to the parent (it stops
  the pool; the units in flight are redone on the next run), and an end as
  soon as the parent (PID `parent`) ends, however it ends: a worker that
  outlived a kill -9 would go on writing into --out beside the next run."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  set_counter(counter)
  _die_with_parent(parent)


def _die_with_parent(parent: int) -> None:
  """SIGKILL from the kernel when the parent dies (Linux), and on every
  system a thread that exits once the parent is gone (re-parented)."""
  if sys.platform.startswith("linux"):
    try:
      import ctypes
      libc = ctypes.CDLL(None, use_errno=True)
      pr_set_pdeathsig = 1
      libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
      pass
  if os.getppid() != parent:  # died before the request above took effect
    os._exit(1)

  def watch():
    while os.getppid() == parent:
      time.sleep(0.5)
    os._exit(1)
  threading.Thread(target=watch, daemon=True).start()


def _hash(text: str) -> int:
  return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(),
                        "little")


def draw_split(key: str, fractions: dict[str, float], seed: int) -> str:
  """The split of an image with no split of its own: a seeded draw, the
  same for the image wherever it appears."""
  u = _hash(f"{seed}:{key}") / 2.0**64
  for split, fraction in sorted(fractions.items()):
    if u < fraction:
      return split
    u -= fraction
  return "train"


def partition(make_rows, directory: epath.Path, examples_per_shard: int,
              root: str) -> tuple[list[epath.Path], np.ndarray]:
  """Streams the rows of `make_rows()` into hash buckets of about
  `examples_per_shard` rows each, by image path, so all rows of one image
  land in one bucket. Deterministic; redone unless it finished before.
  Returns the non-empty bucket files and uint64 [K], the sorted distinct
  hashes of the images' paths under `root` (to find an image that several
  sources name)."""
  done = directory / "DONE"
  if done.exists():
    paths = [directory / name for name in json.loads(done.read_text())]
    if not (directory / "images.npy").exists():  # partitioned by an older
      np.save(directory / "images.npy", _image_hashes(paths, root))  # version
    return paths, np.load(directory / "images.npy")
  if directory.exists():
    shutil.rmtree(directory)
  directory.mkdir(parents=True)
  count = sum(1 for _ in make_rows())
  buckets = max(1, math.ceil(count / examples_per_shard))
  soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
  if buckets + 64 > soft:
    resource.setrlimit(resource.RLIMIT_NOFILE,
                       (min(hard, buckets + 64), hard))
  files = [None] * buckets
  images = np.zeros(count, np.uint64)
  try:
    for number, row in enumerate(make_rows()):
      # img/x.png, ./img/x.png, img//x.png and ROOT/img/x.png are one image.
      row.image = posixpath.normpath(row.image)
      if posixpath.isabs(row.image) and "://" not in root:
        inside = posixpath.relpath(row.image, os.path.abspath(root))
        outside = inside == ".." or inside.startswith("../")
        row.image = row.image if outside else inside
      images[number] = _image_hash(root, row.image)
      b = _hash(row.image) % buckets
      if files[b] is None:
        files[b] = open(directory / f"bucket-{b:05d}.jsonl", "w")
      files[b].write(json.dumps(dataclasses.asdict(row)) + "\n")
  finally:
    for f in files:
      if f is not None:
        f.close()
  images = np.unique(images)
  np.save(directory / "images.npy", images)
  names = [f"bucket-{b:05d}.jsonl" for b in range(buckets) if files[b]]
  done.write_text(json.dumps(names))
  return [directory / name for name in names], images


def _image_hash(root: str, image: str) -> int:
  """The identity of an image file across sources: its resolved path."""
  return _hash(os.path.normpath(os.path.join(root, image)))


def _image_hashes(paths: list[epath.Path], root: str) -> np.ndarray:
  """uint64 [K]: the sorted distinct `_image_hash`es of the images that the
  bucket files at `paths` name."""
  hashes = set()
  for path in paths:
    with open(path) as f:
      hashes.update(_image_hash(root, json.loads(line)["image"]) for line in f)
  return np.array(sorted(hashes), np.uint64)


def _row_items(bucket: str, root: str):
  """A bucket's rows grouped by image (first appearance order), with the
  image bytes read."""
  grouped = {}
  with open(bucket) as f:
    for line in f:
      row = json.loads(line)
      entry = grouped.setdefault(row["image"], row | {
          "captions": [], "splits": [],
          "fields": {f: [] for f in row.get("fields", {})}})
      entry["captions"] += row["captions"]
      for field, captions in row.get("fields", {}).items():
        entry["fields"][field] += captions
      if row["split"] is not None and row["split"] not in entry["splits"]:
        entry["splits"].append(row["split"])
  for image, row in grouped.items():
    item = readers.read_image(root, image)
    splits = row["splits"] or [None]  # rows without a split name none
    item.captions, item.split, item.label = (row["captions"], splits[0],
                                             row["label"])
    item.fields = row["fields"]
    item.other_splits = tuple(splits[1:])
    yield item


def _items(unit: Unit):
  """The unit's examples: a bucket of rows (images read here), or a unit of
  a unit source read by its format."""
  if unit.kind == "rows":
    return _row_items(unit.args["bucket"], unit.args["root"])
  return formats.FORMATS[unit.kind].items(**unit.args)


def convert(unit: Unit, out: str, name: str, marker: str,
            staging_root: str) -> None:
  """Converts one unit into SPLIT-NAME.array_record files under `out`
  (written in a directory of `staging_root` first) and then writes its
  `marker` (counts, caption histogram, problems, and each shard's size and
  CRC32): a unit with a marker whose shards match it is complete, any other
  is redone from scratch. The staging directory is this call's own, so
  nothing another process writes can be moved into `out` by this one."""
  a = unit.args
  os.makedirs(staging_root, exist_ok=True)
  staging = os.path.join(staging_root,
                         f"unit-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
  os.makedirs(staging)
  writers, stats = {}, {}
  skipped = {"missing": 0, "undecodable": 0, "no_caption": 0, "no_label": 0,
             "damaged": 0}
  problems, conflicts = [], {"count": 0, "examples": []}

  def skip(item, why):
    skipped[why.split(" ")[0]] += 1
    if len(problems) < PROBLEMS_SHOWN:
      problems.append(f"{item.key}: {why}")

  try:
    for item in _items(unit):
      if _counter is not None:
        with _counter.get_lock():
          _counter.value += 1
      captions = [c.strip() for c in item.captions if c and c.strip()]
      if item.problem:
        skip(item, item.problem)
        continue
      if readers.image_size(item.image) is None:
        skip(item, "undecodable")
        continue
      is_class_set = a["num_classes"] is not None
      if not is_class_set:
        item.label = None  # a caption set's rows may carry labels: unused
      if is_class_set and (item.label is None
                           or item.label >= a["num_classes"]):
        skip(item, "no_label" if item.label is None else
             f"no_label (label {item.label} ≥ {a['num_classes']} classes)")
        continue
      if not is_class_set and not captions:
        skip(item, "no_caption")
        continue
      split = (a["split"] or item.split
               or draw_split(item.key, a["fractions"], a["seed"]))
      if item.other_splits and not a["split"]:
        conflicts["count"] += 1
        if len(conflicts["examples"]) < PROBLEMS_SHOWN:
          conflicts["examples"].append(
              f"{item.key}: in {split} and {', '.join(item.other_splits)} "
              f"(kept in {split})")
      if split not in writers:
        path = os.path.join(staging, f"{split}-{name}.array_record")
        writers[split] = (ArrayRecordWriter(path, "group_size:1"), path)
        stats[split] = {"examples": 0, "captions": 0,
                        "hist": [0] * (MAX_WORDS_BIN + 1)}
      fields = {f: [c.strip() for c in cs if c and c.strip()]
                for f, cs in item.fields.items()}
      writers[split][0].write(prepared.encode_record(
          item.key, item.image, captions, item.label, fields))
      s = stats[split]
      s["examples"] += 1
      s["captions"] += len(captions)
      for field, kept in fields.items():
        s.setdefault("fields", {}).setdefault(field, 0)
        s["fields"][field] += len(kept)
      for caption in captions:
        s["hist"][min(len(caption.split()), MAX_WORDS_BIN)] += 1
    for split, (writer, path) in writers.items():
      writer.close()
      stats[split]["bytes"] = os.path.getsize(path)
      stats[split]["crc32"] = prepared.file_crc32(path)
      target = epath.Path(out) / os.path.basename(path)
      if "://" in out:
        epath.Path(path).copy(target, overwrite=True)
      else:
        os.replace(path, target)
      stats[split]["file"] = target.name
    tmp_marker = marker + ".tmp"
    epath.Path(tmp_marker).write_text(json.dumps(
        {"splits": stats, "skipped": skipped, "problems": problems,
         "split_conflicts": conflicts}))
    epath.Path(tmp_marker).rename(marker)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def convert_job(job) -> None:
  """`convert(*job)` for a worker pool."""
  convert(*job)


def damaged(out: str, marker: dict) -> str | None:
  """Why a done unit's shards under `out` are not the ones its `marker`
  records (e.g. "train-00003-of-00010.array_record: missing"), or None.
  Markers written before sizes were recorded pass unchecked."""
  for s in marker["splits"].values():
    # A remote --out is checked by size: reading it back costs a download.
    problem = prepared.shard_problem(str(epath.Path(out) / s["file"]),
                                     s.get("bytes"), s.get("crc32"),
                                     checksum="://" not in out)
    if problem is not None:
      return f"{s['file']}: {problem}"
  return None


def card(done: list[dict], fixed: dict, spec: dict) -> dict:
  """The dataset card from the units' markers (in unit order)."""
  splits, counts, problems = {}, {}, []
  conflicts = {"count": 0, "examples": []}
  for marker in done:
    for split, s in marker["splits"].items():
      entry = splits.setdefault(split, {"examples": 0, "captions": 0,
                                        "shards": [],
                                        "hist": [0] * (MAX_WORDS_BIN + 1)})
      entry["examples"] += s["examples"]
      entry["captions"] += s["captions"]
      entry["shards"].append({k: s[k] for k in ("file", "examples", "bytes",
                                                 "crc32") if k in s})
      entry["hist"] = [x + y for x, y in zip(entry["hist"], s["hist"])]
      for field, n in s.get("fields", {}).items():  # --caption_fields
        entry.setdefault("fields", {}).setdefault(field, 0)
        entry["fields"][field] += n
    for why, n in marker["skipped"].items():
      counts[why] = counts.get(why, 0) + n
    problems += marker["problems"]
    marked = marker.get("split_conflicts", {"count": 0, "examples": []})
    conflicts["count"] += marked["count"]
    conflicts["examples"] += marked["examples"]
  for entry in splits.values():
    entry["caption_words"] = prepared.word_statistics(entry.pop("hist"))
  fields = formats.field_names(spec.get("caption_fields", ""))
  if fields:
    fixed = dict(fixed, caption_fields=list(fields))
  return {"format": prepared.FORMAT, "version": prepared.VERSION, **fixed,
          "splits": splits,
          "skipped": {"counts": counts, "examples": problems[:PROBLEMS_SHOWN]},
          "split_conflicts": {"count": conflicts["count"], "examples":
                              conflicts["examples"][:PROBLEMS_SHOWN]},
          "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
          "spec": spec}


def card_markdown(card: dict) -> str:
  """The card for people: sources, splits, caption lengths, skipped rows."""
  lines = [f"# Prepared dataset ({card['kind']})", "",
           f"Created {card['created']} by `python -m cliplite_jax.prepare` "
           f"from:", ""]
  lines += [f"- `{s}`" for s in card["sources"]]
  if card.get("caption_fields"):
    lines += ["", "Caption fields kept beside the captions: "
              + ", ".join(f"`{f}`" for f in card["caption_fields"]) + "."]
  lines += ["", "| split | examples | captions | shards | words per caption "
            "(mean / median / p95 / max) |", "|---|---|---|---|---|"]
  for name, s in sorted(card["splits"].items()):
    w = s["caption_words"]
    words = (f"{w['mean_words']} / {w['median_words']} / {w['p95_words']} / "
             f"{w['max_words']}" if w["captions"] else "–")
    lines.append(f"| {name} | {s['examples']} | {s['captions']} | "
                 f"{len(s['shards'])} | {words} |")
  if card["kind"] == "classes":
    lines += ["", f"{len(card['class_names'])} classes; zero-shot prompts: "
              + "; ".join(f"`{t}`" for t in card["templates"][:5])
              + (" …" if len(card["templates"]) > 5 else "")]
  counts = card["skipped"]["counts"]
  lines += ["", "Skipped: " + (", ".join(f"{n} {why}" for why, n in
                                         sorted(counts.items()) if n)
                               or "none")]
  lines += [f"- {p}" for p in card["skipped"]["examples"]]
  for shared in card.get("images_in_several_sources", []):
    lines += ["", f"Warning: {shared} (separate examples of one image)"]
  conflicts = card.get("split_conflicts", {"count": 0})
  if conflicts["count"]:
    lines += ["", f"Listed in more than one split: {conflicts['count']} "
              f"images, each kept in the split of its first row"]
    lines += [f"- {c}" for c in conflicts["examples"]]
  return "\n".join(lines) + "\n"
