"""What a training run checks about its data before it writes anything, and
what it records in WORKDIR once it is past start-up.

- `check_data`: the datasets and splits open, the training split holds a
  batch, and a `data.rewrites` file has rewrites for the training examples
  (none: refused; under `REWRITES_WARN_BELOW` of them: a warning).
- `check_dataset_identity`: a prepared training set re-prepared since the
  run started (its dataset card changed) is refused on resume.
- `record_start`: WORKDIR/config.json and WORKDIR/dataset_identity.json,
  written once the run's first step has run (or, for a finished run, before
  its evaluation), so a run that fails at start-up leaves what the next
  resume compares against as it was.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import sys

import jax
import ml_collections
import numpy as np
from etils import epath

from cliplite_jax import config_io
from cliplite_jax.probes import evaluated

from cliplite_jax.data import mixture, pipeline, prepared, sources, vectors
from cliplite_jax.models import multimodal
from cliplite_jax.training import optim

IDENTITY_FILE = "dataset_identity.json"
# Below this share of the training examples with rewrites, a warning.
REWRITES_WARN_BELOW = 0.5
# Sets keyed by a feature (COCO's image/id, a prepared set's key) are read
# example by example to count their rewrites: at most this many, evenly
# spaced (the count is then an estimate, and says so).
REWRITES_SAMPLE = 2000


@dataclasses.dataclass(frozen=True)
class DataCheck:
  """What `check_data` found: `num_examples`, the training examples (the
  fraction's); `rewrites_line`, the start-up summary's line about
  `data.rewrites` (None without); `mixture_line`, the one about
  `data.mixture`'s sources (None without)."""
  num_examples: int
  rewrites_line: str | None = None
  mixture_line: str | None = None


def check_data(config: ml_collections.ConfigDict) -> DataCheck:
  """Fails early, before anything is written, on an unreadable dataset or
  rewrites file, a class set to train on, a training split smaller than one
  batch, or a rewrites file that matches none of the training examples."""
  if mixture.is_mixture(config):
    return _check_mixture(config)
  evaluated.check_reads([(config.data.name, config.data.train_split)]
                         + evaluated.evaluation_reads(config),
                         config.data.data_dir)
  if multimodal.is_multimodal(config):
    # The split zero-shot reads too: a mismatch there would surface only
    # after training.
    splits = [config.data.train_split] + (
        [config.eval.split] if "zeroshot" in config.eval.probes else [])
    for split in splits:
      vectors.check_features(config, sources.open_split(
          config.data.name, split, config.data.data_dir), split)
  elif sources.get(config.data.name)[0].captions_key is None:
    raise config_io.UserError(
        f"data.name {config.data.name} is a class set, without captions: "
        f"training needs image-caption pairs; score models on it with "
        f"eval.transfer")
  examples = sources.open_split(config.data.name, config.data.train_split,
                                config.data.data_dir)
  indices = pipeline.subset_indices(len(examples), config.data.fraction,
                                    config.data.fraction_seed)
  needed = pipeline.epoch_chunk(config)
  if len(indices) < needed:
    raise config_io.UserError(
        f"{config.data.name} {config.data.train_split} has {len(indices)} "
        f"training examples (data.fraction {config.data.fraction}), fewer "
        f"than one batch of {needed}: lower --config.batch_size"
        + (" or data.num_workers" if config.data.num_workers > 0 else ""))
  _check_caption_fields(config, config.data.name)
  rewrites = pipeline.load_rewrites(config.data.get("rewrites"))
  line = None
  if config.data.get("rewrites") and not multimodal.is_multimodal(config):
    line = _check_rewrites(config, examples, indices, rewrites)
  return DataCheck(len(indices), line)


def _check_caption_fields(config: ml_collections.ConfigDict,
                          name: str) -> None:
  """UserError when `data.caption_fields` names a field the training set
  `name` was not prepared with (`prepare --caption_fields`)."""
  wanted = [f for f, _ in pipeline.caption_fields(config.data)
            if f not in ("captions", "rewrites")]
  if not wanted:
    return
  kept = (prepared.read_card(name).get("caption_fields", [])
          if prepared.is_prepared_name(name) else [])
  missing = [f for f in wanted if f not in kept]
  if missing:
    raise config_io.UserError(
        f"data.caption_fields draws {', '.join(missing)}, which {name} does "
        f"not keep (its fields: {', '.join(['captions'] + kept)}; prepare "
        f"it with --caption_fields={','.join(wanted)})")


def _check_mixture(config: ml_collections.ConfigDict) -> DataCheck:
  """`check_data` for `data.mixture`: every source readable, a caption
  set, with training examples; the summary's line of sizes, weights and
  the epochs of each the run covers."""
  named = mixture.sources_of(config)
  evaluated.check_reads([(name, config.data.train_split) for name, _ in named]
                        + evaluated.evaluation_reads(config),
                        config.data.data_dir)
  sizes = []
  for name, _ in named:
    if sources.get(name)[0].captions_key is None:
      raise config_io.UserError(
          f"data.mixture: {name} is a class set, without captions: training "
          f"needs image-caption pairs")
    _check_caption_fields(config, name)
    examples = sources.open_split(name, config.data.train_split,
                                  config.data.data_dir)
    sizes.append(len(pipeline.subset_indices(
        len(examples), config.data.fraction, config.data.fraction_seed)))
  if sum(sizes) < pipeline.epoch_chunk(config):
    raise config_io.UserError(
        f"data.mixture's sources have {sum(sizes)} training examples in all, "
        f"fewer than one batch of {pipeline.epoch_chunk(config)}: lower "
        f"--config.batch_size")
  line = "mixture: " + "; ".join(
      f"{sources.display_name(name)} weight {weight:.3g}, {size} examples, "
      f"{mixture.epochs_covered(size, weight, config.total_steps, config.batch_size):.2f}"
      f" epochs" for (name, weight), size in zip(named, sizes))
  return DataCheck(sum(sizes), mixture_line=line)


def rewrite_coverage(source: sources.Source, examples, indices: np.ndarray,
                     rewrites: dict[str, list[str]]) -> tuple[int, int]:
  """(examples with at least one rewrite, examples checked) among the
  training examples `indices` (int [N]) of `examples`: all of them when the
  rewrites are keyed by split index, else at most `REWRITES_SAMPLE` evenly
  spaced ones (each is read for its id)."""
  checked = indices
  if source.id_key is not None and len(indices) > REWRITES_SAMPLE:
    checked = indices[np.linspace(0, len(indices) - 1,
                                  REWRITES_SAMPLE).astype(np.int64)]
  matched = 0
  for i in checked:
    example = examples[int(i)] if source.id_key is not None else None
    matched += bool(rewrites.get(sources.image_id(source, int(i), example)))
  return matched, len(checked)


def _check_rewrites(config, examples, indices, rewrites) -> str:
  """`rewrite_coverage` refused at none, warned about under
  REWRITES_WARN_BELOW; returns the summary line."""
  path, name = config.data.rewrites, config.data.name
  split = config.data.train_split
  source, _ = sources.get(name)
  matched, checked = rewrite_coverage(source, examples, indices, rewrites)
  sampled = f" of {checked} sampled" if checked < len(indices) else ""
  if not matched:
    first = int(indices[0])
    own = sources.image_id(source, first, examples[first]
                           if source.id_key is not None else None)
    keys = (f"its keys (e.g. {next(iter(rewrites))!r}) are not the "
            f"examples' ids" if rewrites else "it holds no rewrites")
    kind = (f"their {source.id_key}" if source.id_key is not None
            else "their index in the split")
    raise config_io.UserError(
        f"data.rewrites {path} has rewrites for none of the {len(indices)} "
        f"training examples of {name} {split}{sampled}: {keys} (the ids are "
        f"{kind}, e.g. {own!r}; a key with an empty list has none); make it "
        f"for this split with python -m cliplite_jax.rewrite --data={name} "
        f"--split={split}")
  share = matched / checked
  if share < REWRITES_WARN_BELOW:
    print(f"warning: data.rewrites {path} has rewrites for only {share:.0%} "
          f"of the training examples of {name} {split} ({matched} of "
          f"{checked}{' sampled' if sampled else ''}); the others train on "
          f"their own captions only", file=sys.stderr, flush=True)
  if sampled:
    return (f"rewrites: {path}, for ≈ {share:.0%} of the {len(indices)} "
            f"training examples ({matched}{sampled})")
  return (f"rewrites: {path}, for {matched} of the {checked} training "
          f"examples ({share:.0%})")


def dataset_identity(name: str) -> dict:
  """{"name"} for a registered (TFDS) dataset; for a prepared one also
  "card_sha256" (of its whole dataset card, which names every shard, its
  counts, the sources and their fingerprints, and when it was made),
  "created" and "examples" {split: count}."""
  if not prepared.is_prepared_name(name):
    return {"name": name}
  card = prepared.read_card(name)
  digest = hashlib.sha256(json.dumps(card, sort_keys=True).encode())
  return {"name": name, "card_sha256": digest.hexdigest(),
          "created": card.get("created"),
          "examples": {s: info["examples"]
                       for s, info in sorted(card["splits"].items())}}


def check_dataset_identity(config: ml_collections.ConfigDict, workdir: str,
                           allow: bool) -> dict:
  """Refuses (UserError) to resume WORKDIR when its prepared training set
  (`data.name`, the same path) is not the one recorded when the run started:
  prepared again, the run would continue on other data. With `allow`
  (--allow_config_change) one line says it continues on the new set.
  Returns the identity to record (`record_start`)."""
  identity = dataset_identity(config.data.name)
  path = epath.Path(workdir) / IDENTITY_FILE
  if "card_sha256" not in identity or not path.exists():
    return identity
  try:
    recorded = json.loads(path.read_text())
    recorded_digest = recorded.get("card_sha256")
    same_name = recorded.get("name") == identity["name"]
  except (ValueError, AttributeError) as e:
    raise config_io.UserError(
        f"{path} is damaged ({e}); it records the prepared set this run "
        f"started on: put back a copy, or delete it to resume without the "
        f"check") from e
  if not same_name or recorded_digest in (None, identity["card_sha256"]):
    return identity  # another data.name: config.json's check covers it
  changes = [f"{s} {recorded.get('examples', {}).get(s, 0)} → {n} examples"
             for s, n in identity["examples"].items()
             if recorded.get("examples", {}).get(s, 0) != n]
  changes += [f"{s} gone" for s in recorded.get("examples", {})
              if s not in identity["examples"]]
  if recorded.get("created") != identity["created"]:
    changes.append(f"prepared {recorded.get('created')}, now "
                   f"{identity['created']}")
  what = ", ".join(changes) or "its dataset card differs"
  if allow:
    print(f"data.name {config.data.name} was prepared again since this run "
          f"started ({what}): continuing on it (--allow_config_change)",
          flush=True)
    return identity
  raise config_io.UserError(
      f"data.name {config.data.name} was prepared again since this run "
      f"started ({what}; recorded in {path}): resuming would continue on "
      f"other data; put back the set this run trained on, train on this one "
      f"in a new --workdir, or pass --allow_config_change to continue on it")


def record_start(config: ml_collections.ConfigDict, workdir: str,
                 identity: dict) -> None:
  """Writes WORKDIR/config.json and WORKDIR/dataset_identity.json (process
  0), each replaced whole."""
  if jax.process_index() != 0:
    return
  for name, text in ((config_io.CONFIG_FILE,
                      config.to_json(indent=1, sort_keys=True)),
                     (IDENTITY_FILE, json.dumps(identity, indent=1))):
    path = epath.Path(workdir) / name
    partial = path.parent / f".{name}.partial"
    partial.write_text(text)
    partial.replace(path)


def say_what_resuming_changes(config: ml_collections.ConfigDict,
                              workdir: str, step: int,
                              on_disk: list[int]) -> None:
  """One line each for resume-time changes that alter more than they seem
  to: a new total_steps re-stretches the cosine schedule (the learning rate
  jumps), and a smaller retention deletes earlier runs' checkpoints."""
  if not (epath.Path(workdir) / config_io.CONFIG_FILE).exists():
    return
  saved = config_io.load_saved(workdir)
  if saved.total_steps != config.total_steps:
    group = next(iter(config.optim.lr))
    before = optim.schedules(saved)[group](step)
    after = optim.schedules(config)[group](step)
    print(f"total_steps changed from {saved.total_steps} to "
          f"{config.total_steps}: the warmup-cosine schedule is stretched to "
          f"the new length, so lr/{group} at step {step} goes from "
          f"{float(before):.4g} to {float(after):.4g}", flush=True)
  kept = config.keep_checkpoints
  every = config.get("keep_every_steps") or 0
  steps = sorted(on_disk)
  doomed = [s for s in steps[:len(steps) + 1 - kept]
            if not every or s % every]
  if len(steps) > kept and doomed:
    print(f"keep_checkpoints={kept}: the next save deletes the earlier "
          f"checkpoints at steps {doomed} (raise keep_checkpoints to keep "
          f"them)", flush=True)
