"""Training on several caption sets mixed by weight (`data.mixture`), as
big_vision's weighted TFDS mixtures and open_clip's upsampling factors.

`data.mixture = "NAME=WEIGHT,NAME=WEIGHT,..."` names TFDS caption sets and
prepared sets (any `data.name`) with positive weights (normalised to sum to
1); "" trains on `data.name` alone. Each source is its own infinite stream,
reshuffled per epoch of its `data.fraction` subset, with a seed of its own;
grain's mixing (`grain.MapDataset.mix`) interleaves them deterministically
in the weights' proportions, so element k of the global stream is a fixed
function of k. Everything downstream is the single-source pipeline's, keyed
by that position: exact mid-epoch resume, the same global batches on any
number of processes, skipped examples counted. Each element carries
"source" (its index in the mixture), and the train step logs the fraction
of each batch drawn from each source.
"""
from __future__ import annotations

from typing import Callable

import grain
import ml_collections
import numpy as np

from cliplite_jax import config_io
from cliplite_jax.data import sources, streams as streams_lib

# Seeds each source's epoch shuffle apart from the others'.
_SOURCE_SEED_STRIDE = 1_000_003


def parse(text: str, key: str = "data.mixture",
          example: str = "coco_captions=0.7,/data/cc3m=0.3"
          ) -> list[tuple[str, float]]:
  """"coco_captions=0.7,/data/cc3m=0.3" → [(name, weight)], weights
  normalised to sum to 1; UserError naming `key` and a malformed entry, a
  repeated name or a weight that is not a positive number."""
  entries, names = [], set()
  for item in filter(None, (part.strip() for part in text.split(","))):
    name, eq, weight = item.rpartition("=")
    name = name.strip()
    try:
      value = float(weight)
    except ValueError:
      value = float("nan")
    if not eq or not name or not value > 0 or value == float("inf"):
      raise config_io.UserError(
          f"{key}: {item!r} is not NAME=WEIGHT with a positive "
          f"weight (e.g. {key}='{example}')")
    if name in names:
      raise config_io.UserError(f"{key} names {name!r} twice")
    names.add(name)
    entries.append((name, value))
  total = sum(w for _, w in entries)
  return [(name, w / total) for name, w in entries]


def sources_of(config: ml_collections.ConfigDict) -> list[tuple[str, float]]:
  """The training sources and their weights: `data.mixture`'s, or
  [(data.name, 1.0)] without one."""
  mixture = config.data.get("mixture", "")
  return parse(mixture) if mixture else [(config.data.name, 1.0)]


def is_mixture(config: ml_collections.ConfigDict) -> bool:
  """Whether the run trains on a mixture of sources."""
  return bool(config.data.get("mixture", ""))


def source_seed(seed: int, position: int) -> int:
  """The epoch-shuffle seed of the mixture's `position`-th source."""
  return seed + _SOURCE_SEED_STRIDE * (position + 1)


class Tagged(grain.transforms.Map):
  """element → (source position, element): what `Transform` dispatches on."""

  def __init__(self, position: int):
    self._position = position

  def map(self, element):
    return self._position, element


class Transform(grain.transforms.RandomMap):
  """(source position, (index, example)) → that source's transform's
  output with "source": int32 [] (its position), or `SKIPPED` as it gives."""

  def __init__(self, transforms: list[grain.transforms.RandomMap]):
    self._transforms = transforms

  def random_map(self, element, rng: np.random.Generator):
    position, inner = element
    out = self._transforms[position].random_map(inner, rng)
    if isinstance(out, dict):
      out["source"] = np.int32(position)
    return out


def mix(datasets: list[grain.MapDataset],
        weights: list[float]) -> grain.MapDataset:
  """The tagged sources interleaved in the weights' proportions (grain's
  deterministic mixing: every prefix of the stream is within a few
  elements of each source's share)."""
  tagged = [ds.map(Tagged(i)) for i, ds in enumerate(datasets)]
  return grain.MapDataset.mix(tagged, weights)


def mixed_stream(config: ml_collections.ConfigDict,
                 make_transform: Callable[[sources.Source],
                                          grain.transforms.RandomMap]
                 ) -> tuple[grain.MapDataset, int]:
  """The `data.mixture` sources' training examples interleaved by weight
  and transformed (`make_transform(source)` per source), keyed by the
  position in the mixed global stream as a single source's are; and how
  many unusable examples in a row mean there is nothing to train on (every
  source's subset, together)."""
  streams, transforms, weights, size = [], [], [], 0
  for position, (name, weight) in enumerate(sources_of(config)):
    source, _ = sources.get(name)
    examples = sources.open_split(name, config.data.train_split,
                                  config.data.data_dir)
    indices = streams_lib.subset_indices(
        len(examples), config.data.fraction, config.data.fraction_seed)
    streams.append(streams_lib.EpochShuffle(
        grain.MapDataset.source(streams_lib.IndexedExamples(examples,
                                                            indices)),
        seed=source_seed(config.seed, position), batch_size=1))
    transforms.append(make_transform(source))
    weights.append(weight)
    size += len(indices)
  ds = mix(streams, weights).random_map(Transform(transforms),
                                        seed=config.seed)
  return ds, max(size, 1)


def epochs_covered(size: int, weight: float, total_steps: int,
                   batch_size: int) -> float:
  """How many epochs of a source of `size` examples a run draws."""
  return total_steps * batch_size * weight / max(size, 1)


def _check_caption_fields(c) -> None:
  text = c.get("data.caption_fields", "")
  if not text:
    return
  try:
    names = [name for name, _ in parse(str(text), "data.caption_fields")]
  except config_io.UserError as e:
    c.problems.append(str(e))
    return
  if "rewrites" in names and not c.get("data.rewrites"):
    c.problems.append("data.caption_fields draws 'rewrites', but "
                      "data.rewrites names no rewrites file")


def check_fields(c, config: ml_collections.ConfigDict) -> None:
  """Validation of `data.mixture` and `data.caption_fields` (validation's
  checker `c` collects a line per problem)."""
  _check_caption_fields(c)
  mixed = c.get("data.mixture", "")
  if not mixed:
    return
  if not isinstance(mixed, str):
    c.problems.append("data.mixture must be a string NAME=WEIGHT,... "
                      "(\"\": data.name alone)")
    return
  try:
    names = [name for name, _ in parse(mixed)]
  except config_io.UserError as e:
    c.problems.append(str(e))
    return
  if "modalities" in config.model:
    c.problems.append("data.mixture mixes image-caption sets; a "
                      "multi-modality model trains on data.name alone")
  shown = [sources.display_name(n) for n in names]
  if len(set(shown)) < len(shown):
    c.problems.append(
        f"data.mixture's sources are logged by name ({', '.join(shown)}): "
        f"give each a distinct one (prepared sets: their directory names)")
  names = [sources.canonical(n) for n in names]
  if sources.canonical(config.data.name) not in names:
    c.problems.append(
        f"data.name={config.data.name!r} (the set evaluated) must be one of "
        f"data.mixture's sources: {', '.join(names)}")
