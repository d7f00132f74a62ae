r"""Prepares a user's image–caption or image–class collection, once.

  python -m cliplite_jax.prepare --source=[SPLIT=]SPEC [--source=...] \
      --out=DIR [--split_fractions=validation=0.05,test=0.05] [options]

SPEC is one of
  captions.jsonl | captions.csv | captions.tsv   a captions file; image paths
      in it are relative to --images (default: the file's directory)
  karpathy:dataset_flickr30k.json   Karpathy's split file (its splits kept)
  DIR_OR_GLOB_OF_TARS               webdataset shards as img2dataset writes
  folder:DIR                        a folder per class (a class set)
  tfds:NAME                         a TFDS dataset, --image_key and
                                    --text_key (or --label_key) naming its
                                    features; its splits kept
A "SPLIT=" prefix puts all of a source's examples in that split; otherwise
splits come from the source (a "split" field or column, Karpathy's, TFDS's)
or from --split_fractions, a seeded draw per image (the rest is "train").

The work is cut into units (a hash bucket of a captions file's images, a tar
shard, a slice of a TFDS split), converted in parallel over --num_workers
processes, each written to its own ArrayRecord files and recorded done only
once they are complete: rerunning the same command after an interruption
continues with the units not done, and never writes an example twice.
Missing and undecodable images and examples without a caption are skipped
and counted. The result opens with `--config.data.name=DIR` (see
cliplite_jax/data/prepared.py), and DIR/dataset_card.md describes it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import tempfile

import numpy as np
from absl import app, flags
from etils import epath

if __name__ == "__main__":
  from cliplite_jax.training import native_logs
  native_logs.quiet()  # before readers import TensorFlow (tfds:NAME)

from cliplite_jax import cli, progress
from cliplite_jax.data import (formats, prepare_beam, prepare_units, prepared,
                               readers)
from cliplite_jax.data.prepare_output import (check_out, create_out,
                                              finished_card, lock_out)
from cliplite_jax.data.prepare_options import (Options, PrepareError,
                                               parse_fractions, parse_source,
                                               read_lines)
from cliplite_jax.data.prepare_options import spec as make_spec

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("source", [], "[SPLIT=]SPEC; see the module doc.")
flags.DEFINE_string("out", "", "The prepared dataset's directory (or gs://).")
flags.DEFINE_string("images", "", "Root of the image paths of captions files "
                    "(default: the captions file's directory).")
flags.DEFINE_string("image_column", "image", "CSV/TSV: the image path column.")
flags.DEFINE_string("caption_column", "caption", "CSV/TSV: the caption column.")
flags.DEFINE_string("split_column", "split", "CSV/TSV: the split column, if "
                    "present.")
flags.DEFINE_string("image_key", "image", "tfds: the image feature.")
flags.DEFINE_string("text_key", "", "tfds: the text (or sequence of text) "
                    "feature, a /-path such as captions/text.")
flags.DEFINE_string("label_key", "", "tfds: the class label feature (a class "
                    "set).")
flags.DEFINE_string("data_dir", "", "tfds: its data_dir.")
flags.DEFINE_string("caption_fields", "", "Other caption kinds to keep beside "
                    "the captions, e.g. blip2_caption,rewrite: JSONL keys, "
                    "CSV/TSV columns or webdataset json keys; training draws "
                    "them by data.caption_fields' probabilities.")
flags.DEFINE_string("class_names", "", "A file of class names, one per line, "
                    "in label order (default: folder or TFDS label names).")
flags.DEFINE_string("templates", "", "A file of zero-shot prompt templates, "
                    "one per line with {} for the class name (averaged).")
flags.DEFINE_string("split_fractions", "", "e.g. validation=0.05,test=0.05: "
                    "seeded shares of images for sources without splits.")
flags.DEFINE_integer("split_seed", 0, "Seed of the --split_fractions draw.")
flags.DEFINE_integer("examples_per_shard", 5000, "Target examples per unit.")
flags.DEFINE_integer("num_workers", os.cpu_count() or 1, "Parallel processes "
                     "(the local pool's, or DirectRunner's).")
flags.DEFINE_enum("runner", "local", ["local"] + list(prepare_beam.RUNNERS),
                  "Who converts the units: this machine's process pool "
                  "(local), or an Apache Beam pipeline on DirectRunner, "
                  "Dataflow, Flink or Spark (pip install -e '.[beam]').")
flags.DEFINE_string("beam_options", "", "Beam pipeline options passed "
                    "through, as shell words, e.g. \"--project=P "
                    "--region=R --temp_location=gs://B/tmp "
                    "--setup_file=./setup.py\".")


def options_from_flags() -> Options:
  """The command's flags as `Options`."""
  return Options(**{f.name: FLAGS[f.name].value
                    for f in dataclasses.fields(Options)})


def plan(work: epath.Path, opts: Options
         ) -> tuple[list[prepare_units.Unit], dict]:
  """The units to convert and the card's fixed fields (kind, classes, …).
  Row sources are partitioned here, into local bucket files."""
  fractions = parse_fractions(opts.split_fractions)
  units, classes, kinds, described = [], None, set(), []
  row_sources, fixed_warnings = [], []
  buckets = _bucket_dir(work)
  reserved = {"captions", "caption", "image", "split", "label", "rewrites"}
  if reserved & set(formats.fields_of(opts)):
    raise PrepareError(f"--caption_fields: {sorted(reserved)} are reserved "
                       f"names")
  for number, text in enumerate(opts.source):
    split, kind, location = parse_source(text)
    if formats.fields_of(opts) and not formats.FORMATS[kind].fields:
      raise PrepareError(f"--caption_fields reads JSONL, CSV/TSV and "
                         f"webdataset sources; {kind}:{location} has no "
                         f"other caption fields")
    described.append(f"{kind}:{location}" + (f" → {split}" if split else ""))
    common = dict(split=split, fractions=fractions, seed=opts.split_seed)
    fmt = formats.FORMATS[kind]
    if fmt.plan is not None:
      planned = fmt.plan(location, opts, common)
      kinds.add(planned.kind)
      classes = planned.classes if planned.kind == "classes" else classes
      units += [prepare_units.Unit(kind, args) for args in planned.units]
      continue
    root = fmt.root(location, opts)
    if fmt.classes is not None:
      classes = fmt.classes(location)
    kinds.add("classes" if fmt.classes is not None else "captions")
    paths, images = prepare_units.partition(
        lambda: fmt.rows(location, opts), buckets / f"source{number}",
        opts.examples_per_shard, root)
    for earlier, earlier_images in row_sources:
      shared = np.intersect1d(earlier_images, images).size
      if shared:
        print(f"prepare: warning: {shared} images are named by both "
              f"--source {earlier} and --source {text}; each source's rows "
              f"are separate examples (and may land in different splits)",
              file=sys.stderr)
        fixed_warnings.append(f"{shared} images named by both {earlier} "
                              f"and {text}")
    row_sources.append((text, images))
    units += [prepare_units.Unit("rows", dict(bucket=str(path), root=root,
                                              **common))
              for path in paths]
  if len(kinds) > 1:
    raise PrepareError("--source mixes caption sets and class sets; prepare "
                       "them into separate --out directories")
  if opts.class_names:
    names = read_lines(opts.class_names, "class_names")
    if classes is not None and len(names) != len(classes):
      raise PrepareError(f"--class_names has {len(names)} names for "
                         f"{len(classes)} classes ({', '.join(classes[:5])}"
                         f"{', …' if len(classes) > 5 else ''})")
    classes = names
  kind = kinds.pop()
  if kind == "classes" and not classes:
    raise PrepareError("a class set needs --class_names (its labels have no "
                       "names)")
  for unit in units:
    unit.args["num_classes"] = len(classes) if kind == "classes" else None
  fixed = {"kind": kind, "sources": described,
           "images_in_several_sources": fixed_warnings}
  if kind == "classes":
    fixed["class_names"] = list(classes)
    fixed["templates"] = (read_lines(opts.templates, "templates")
                          if opts.templates else ["a photo of a {}."])
    bad = [t for t in fixed["templates"]
           if "{}" not in t or "{" in t.replace("{}", "")
           or "}" in t.replace("{}", "")]
    if bad:
      raise PrepareError(f"--templates: {bad[0]!r} must hold {{}} for the "
                         f"class name and no other braces")
  return units, fixed


def _bucket_dir(work: epath.Path) -> epath.Path:
  """Where captions files are partitioned: beside the output, or in a local
  temporary directory for a gs:// output (partitioning redoes itself)."""
  if "://" not in str(work):
    return work / "rows"
  digest = hashlib.sha1(str(work).encode()).hexdigest()[:12]
  return epath.Path(tempfile.gettempdir()) / f"cliplite_prepare_{digest}"


def run(opts: Options) -> dict:
  """Prepares (or continues preparing) `opts.source` into `opts.out`;
  returns the dataset card."""
  root = epath.Path(opts.out)
  spec = make_spec(opts)
  finished = finished_card(root, spec)
  if finished is not None and not (root / ".work").exists():
    # Nothing to write (a read-only mount is fine); a .work left by a kill
    # after the card goes the locked way below, which removes it.
    print(f"{opts.out} is already prepared: {_summary(finished)}")
    return finished
  created = create_out(root)
  lock = lock_out(root)  # refused: touch nothing, another prepare owns it
  try:
    return _run_locked(opts, root, spec, created)
  except BaseException:
    # Bad input found before any unit was converted: leave nothing behind
    # (never once the card is written, and only what this prepare made).
    work = root / ".work"
    ours = created or (work / "spec.json").exists()
    if (ours and not (root / prepared.CARD).exists()
        and not (work.exists() and any(work.glob("unit-*.json")))):
      _bucket_dir(work).rmtree(missing_ok=True)
      work.rmtree(missing_ok=True)
      if created:
        root.rmtree(missing_ok=True)
    raise
  finally:
    if lock is not None:
      lock.release()


def _pending_jobs(units, names, out, work, staging) -> list[tuple]:
  """The convert jobs of the units not done; a done unit whose shards no
  longer match its marker is converted again (and said so)."""
  jobs, redone = [], []
  for unit, name in zip(units, names):
    marker = work / f"unit-{name}.json"
    if marker.exists():
      problem = prepare_units.damaged(out, json.loads(marker.read_text()))
      if problem is None:
        continue
      redone.append(problem)
      marker.unlink()
    jobs.append((unit, out, name, str(marker), staging))
  if redone:
    print(f"prepare: {len(redone)} finished unit(s) have damaged shards "
          f"({redone[0]}); converting them again", file=sys.stderr)
  return jobs


def _run_locked(opts: Options, root: epath.Path, spec: dict,
                created: bool) -> dict:
  """`run` once --out exists and is locked."""
  out, work = str(root), root / ".work"
  card = check_out(root, spec)
  if card is not None:
    # Killed after the card, before the clean-up: finish that.
    _bucket_dir(work).rmtree(missing_ok=True)
    work.rmtree(missing_ok=True)
    print(f"{out} is already prepared: {_summary(card)}")
    return card
  # The spec first: a run killed while partitioning is then this run's
  # unfinished work, not a stranger's files in --out.
  work.mkdir(parents=True, exist_ok=True)
  (work / "spec.json").write_text(json.dumps(spec, indent=1))
  prepare_beam.require(opts.runner, opts.beam_options)
  units, fixed = plan(work, opts)
  prepare_beam.check_units(opts.runner, out, [unit.kind for unit in units])
  # Units stage their files here (local outputs) or in a local temporary
  # directory, each in a folder of its own; what an interrupted run staged
  # is removed here (its workers ended with it).
  if "://" not in out:
    staging = str(work / "staging")
    (work / "staging").rmtree(missing_ok=True)
  else:
    staging = tempfile.gettempdir()
  names = [f"{i:05d}-of-{len(units):05d}" for i in range(len(units))]
  pending = _pending_jobs(units, names, out, work, staging)
  if len(pending) < len(units):
    print(f"prepare: continuing, {len(units) - len(pending)} of {len(units)} "
          f"units already done", file=sys.stderr)
  context = multiprocessing.get_context("spawn")
  counter = context.Value("q", 0)
  examples = [0]  # read by a Beam run's units, as their markers appear
  meter = progress.Progress(
      "prepare", len(units), unit="units", done=len(units) - len(pending),
      tally=lambda: counter.value + examples[0], tally_unit="examples")
  with meter:
    workers = max(1, min(opts.num_workers, len(pending)))
    if opts.runner != "local":
      if pending:
        prepare_beam.convert_all(pending, opts.runner, opts.beam_options,
                                 workers, meter, examples)
    elif workers == 1:
      prepare_units.set_counter(counter)
      for job in pending:
        prepare_units.convert(*job)
        meter.add(1)
    else:
      with context.Pool(workers, initializer=prepare_units.init_worker,
                        initargs=(counter, os.getpid())) as pool:
        for _ in pool.imap_unordered(prepare_units.convert_job, pending):
          meter.add(1)
  done = [json.loads((work / f"unit-{name}.json").read_text())
          for name in names]
  # Every shard is read back once before the card calls the set finished.
  for name, marker in zip(names, done):
    problem = prepare_units.damaged(out, marker)
    if problem is not None:
      (work / f"unit-{name}.json").unlink()
      raise PrepareError(f"{problem} after it was written (another process "
                         f"writing into {out}?); rerun the same command to "
                         f"convert it again")
  card = prepare_units.card(done, fixed, spec)
  if not card["splits"]:
    # Nothing worth continuing: a rerun with corrected flags starts afresh.
    _bucket_dir(work).rmtree(missing_ok=True)
    work.rmtree(missing_ok=True)
    if created:
      root.rmtree(missing_ok=True)
    raise PrepareError(f"the sources hold no usable example (skipped: "
                       f"{_summary(card).split('skipped ')[-1]})")
  # The card is the commit point, written whole (a temporary file renamed):
  # a kill before the rename leaves an unfinished run that a rerun ends.
  (root / "dataset_card.md").write_text(prepare_units.card_markdown(card))
  partial = root / (prepared.CARD + ".partial")
  partial.write_text(json.dumps(card, indent=1))
  partial.rename(root / prepared.CARD)
  _bucket_dir(work).rmtree(missing_ok=True)
  work.rmtree(missing_ok=True)
  print(f"prepared {out}: {_summary(card)}")
  for field in card.get("caption_fields", []):
    if not any(s.get("fields", {}).get(field) for s in card["splits"].values()):
      print(f"prepare: warning: --caption_fields {field!r} was found in no "
            f"example (a typo?)", file=sys.stderr)
  conflicts = card["split_conflicts"]
  if conflicts["count"]:
    print(f"prepare: warning: {conflicts['count']} images are listed in more "
          f"than one split, each kept in its first row's split (e.g. "
          f"{conflicts['examples'][0]}; all in {root / 'dataset_card.md'})",
          file=sys.stderr)
  return card


def _summary(card: dict) -> str:
  splits = ", ".join(f"{name} {info['examples']}"
                     for name, info in sorted(card["splits"].items()))
  skipped = card["skipped"]
  lost = ", ".join(f"{v} {k}" for k, v in sorted(skipped["counts"].items())
                   if v) or "none"
  return f"{card['kind']}: {splits}; skipped {lost}"


class Terminated(KeyboardInterrupt):
  """SIGTERM, raised where the main thread is (like Ctrl-C)."""


def _terminate(signum, frame):
  raise Terminated()


def main(argv):
  # timeout, docker stop and preemption send SIGTERM: stop as Ctrl-C does,
  # the pool's workers with us, and say how to continue.
  signal.signal(signal.SIGTERM, _terminate)
  cli.run("cliplite_jax.prepare", argv, _prepare,
          (PrepareError, readers.SourceError, FileNotFoundError, ValueError),
          verbosity="warning",  # TFDS logs at INFO
          interrupted=_interrupted)


def _prepare() -> None:
  """The command: its flags checked, then `run`."""
  opts = options_from_flags()
  if not opts.out:
    raise PrepareError("--out is required")
  if not opts.source:
    raise PrepareError("--source is required (a captions file, tar shards, "
                       "folder:DIR or tfds:NAME)")
  if opts.examples_per_shard < 1 or opts.num_workers < 1:
    raise PrepareError("--examples_per_shard and --num_workers must be ≥ 1")
  run(opts)


def _interrupted(e: KeyboardInterrupt) -> None:
  """Ctrl-C (status 130) or SIGTERM (143): what was done stays done."""
  how, status = (("terminated (SIGTERM)", 143) if isinstance(e, Terminated)
                 else ("interrupted", 130))
  print(f"\ncliplite_jax.prepare: {how}; rerun the same command to "
        f"continue", file=sys.stderr)
  sys.exit(status)


if __name__ == "__main__":
  app.run(main)
