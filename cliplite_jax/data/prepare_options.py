"""The options of `cliplite_jax.prepare` and what they decide: sources
parsed into (split, format, location), split fractions, and the spec a
rerun must match to continue a preparation."""
from __future__ import annotations

import dataclasses
import os

from etils import epath

from cliplite_jax.data import formats, readers


class PrepareError(Exception):
  """Bad input to prepare: printed as one line, exit status 1."""


@dataclasses.dataclass
class Options:
  """The command's flags (see their help); `run` reads only these."""
  source: list[str]
  out: str
  images: str = ""
  image_column: str = "image"
  caption_column: str = "caption"
  split_column: str = "split"
  image_key: str = "image"
  text_key: str = ""
  label_key: str = ""
  data_dir: str = ""
  class_names: str = ""
  templates: str = ""
  split_fractions: str = ""
  split_seed: int = 0
  examples_per_shard: int = 5000
  num_workers: int = 1
  runner: str = "local"
  beam_options: str = ""
  caption_fields: str = ""


def parse_fractions(text: str) -> dict[str, float]:
  """"validation=0.05,test=0.05" → {split: fraction}; PrepareError for a
  malformed, repeated or out-of-range entry, or shares adding up to 1."""
  fractions = {}
  for part in filter(None, text.split(",")):
    split, eq, value = part.partition("=")
    split = split.strip()
    try:
      fraction = float(value)
    except ValueError:
      eq = ""
    if (not eq or not readers.SPLIT_NAME.fullmatch(split)
        or split in fractions or not 0 <= fraction < 1):
      raise PrepareError(f"--split_fractions: {part!r} is not SPLIT=FRACTION "
                         f"with a new split name (letters, digits, _) and "
                         f"0 <= FRACTION < 1")
    fractions[split] = fraction
  if sum(fractions.values()) >= 1:
    raise PrepareError("--split_fractions add up to 1 or more: nothing is "
                       "left for train")
  return fractions


def parse_source(text: str) -> tuple[str | None, str, str]:
  """"[SPLIT=]SPEC" → (split or None, kind, location); local paths made
  absolute, so a rerun from another directory is the same source."""
  split, eq, spec = text.partition("=")
  if not eq or os.path.exists(text) or not readers.SPLIT_NAME.fullmatch(split):
    split, spec = None, text
  found = formats.detect(spec)
  if found is None:
    raise PrepareError(
        f"--source={text}: cannot tell its format; use a .jsonl, .csv or "
        f".tsv file, karpathy:FILE, folder:DIR, tfds:NAME or a directory or "
        f"glob of .tar shards")
  kind, location = found
  if kind != "tfds" and "://" not in location:
    location = os.path.abspath(os.path.expanduser(location))
  return split, kind, location


def _fingerprint(kind: str, location: str) -> list | None:
  """A source file's size and modification time (formats marked
  `fingerprinted`): an unfinished preparation does not continue over an
  edited file."""
  if formats.FORMATS[kind].fingerprinted and os.path.isfile(location):
    info = os.stat(location)
    return [info.st_size, info.st_mtime_ns]
  return None


def spec(opts: Options) -> dict:
  """The options that decide the output (sources as absolute paths, with
  their files' fingerprints): a rerun must match them."""
  spec = dataclasses.asdict(opts)
  # Who converts does not change what is written: a run continues on
  # another runner.
  for key in ("out", "num_workers", "runner", "beam_options"):
    del spec[key]
  if not spec["caption_fields"]:  # as specs written before it existed
    del spec["caption_fields"]
  parsed = [parse_source(text) for text in opts.source]
  spec["source"] = [f"{split}={kind}:{where}" if split else f"{kind}:{where}"
                    for split, kind, where in parsed]
  spec["fingerprints"] = [_fingerprint(kind, where)
                          for _, kind, where in parsed]
  for key in ("images", "class_names", "templates"):
    if spec[key] and "://" not in spec[key]:
      spec[key] = os.path.abspath(os.path.expanduser(spec[key]))
  return spec


def differences(old: dict, new: dict) -> str:
  """"key (old -> new), …" for the keys whose values differ."""
  return ", ".join(f"{k} ({old.get(k)!r} -> {new.get(k)!r})"
                   for k in sorted(set(old) | set(new))
                   if old.get(k) != new.get(k))


def read_lines(path: str, what: str) -> list[str]:
  """The non-blank, stripped lines of the file that flag --`what` names;
  PrepareError when it cannot be read or has none."""
  try:
    data = epath.Path(path).read_bytes()
    lines = [line.strip() for line in data.decode("utf-8").splitlines()]
  except OSError as e:
    raise PrepareError(f"--{what}: cannot read {path}: {e}") from e
  except UnicodeDecodeError as e:
    raise PrepareError(f"--{what}: {readers.utf8_error(path, data, e)}"
                       ) from None
  lines = [line for line in lines if line]
  if not lines:
    raise PrepareError(f"--{what}: {path} is empty")
  return lines
