"""LaCLIP caption rewrites: prompts, output checks, rules, resumable output.

LaCLIP (Fan et al., NeurIPS 2023) rewrites each caption with a language
model by in-context learning: a prompt of k example pairs "input => output"
drawn from one of several "sources" (styles of rewriting), then the caption
and " =>"; the model's first line is the rewrite. One rewrite per source.
Our example sets (`rewrite/examples.json`, written for this project) have
four sources of 12 pairs. LaCLIP's own four (`rewrite/laclip.json`: its
ChatGPT, Bard and human sets of 16 pairs, and its COCO set of 18 images × 5
captions, whose examples are two captions of one image) are chosen with
`--examples=laclip`; users can bring their own file of the same form.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import re
from typing import Iterator

import numpy as np

PROMPT_HEADER = "write image captions differently,"
# LaCLIP's settings: 3 in-context pairs, nucleus sampling at T 0.9 / p 0.95,
# at most 77 new tokens.
SHOTS, TEMPERATURE, TOP_P, MAX_NEW_TOKENS = 3, 0.9, 0.95, 77
DROP_REASONS = ("empty", "no_letters", "too_long", "repeats_prompt")
# And at the end, an image's rewrite equal to an earlier one: "duplicate".


class RewriteError(ValueError):
  """Bad rewrite input: the message names the problem and the fix."""


# Packaged example sets, by the name `--examples` takes.
PACKAGED_EXAMPLES = {"ours": "examples.json", "laclip": "laclip.json"}


def read_examples(path: str | None = None,
                  sources: list[str] | None = None) -> dict:
  """{source: examples} from a packaged set's name ("ours", the default when
  `path` is None, or "laclip") or a JSON file; only `sources` (in that
  order) when given.

  The file is a JSON object of sources (keys starting with "#" are notes).
  A source is a non-empty list of [input, output] pairs of non-empty
  strings, or {"groups": [[caption, caption, ...], ...]}: captions of one
  image, at least two per group, of which an example takes two (LaCLIP's
  COCO set).
  """
  name = "ours" if path is None else path
  if name in PACKAGED_EXAMPLES:
    text = (importlib.resources.files("cliplite_jax.data") / "rewrite"
            / PACKAGED_EXAMPLES[name]).read_text(encoding="utf-8")
    where = f"--examples {name}"
  else:
    try:
      with open(path, encoding="utf-8") as f:
        text = f.read()
    except OSError as e:
      raise RewriteError(
          f"--examples {path}: {e.strerror or e} (a JSON file, or one of "
          f"{', '.join(PACKAGED_EXAMPLES)})") from e
    where = f"--examples {path}"
  try:
    raw = json.loads(text)
  except ValueError as e:
    raise RewriteError(f"{where}: not JSON ({e})") from e
  if not isinstance(raw, dict):
    raise RewriteError(f"{where}: must be a JSON object "
                       f'{{"source": [["input", "output"], ...]}}')
  raw = {k: v for k, v in raw.items() if not str(k).startswith("#")}
  if not raw:
    raise RewriteError(f"{where}: has no sources")
  out = {str(source): _read_source(where, source, examples)
         for source, examples in raw.items()}
  if sources:
    if any(not s for s in sources) or len(set(sources)) < len(sources):
      raise RewriteError(f"--sources {','.join(sources)}: name each source "
                         f"once, separated by commas")
    unknown = [s for s in sources if s not in out]
    if unknown:
      raise RewriteError(f"--sources {','.join(unknown)}: not in {where} "
                         f"(its sources: {', '.join(out)})")
    out = {s: out[s] for s in sources}
  return out


def _strings(items, least: int) -> bool:
  return (isinstance(items, list) and len(items) >= least
          and all(isinstance(s, str) and s.strip() for s in items))


def _read_source(where: str, source: str, examples):
  """A source's examples, checked: [(input, output), ...] or {"groups":
  [(caption, ...), ...]}, each string stripped."""
  if isinstance(examples, dict) and set(examples) == {"groups"}:
    groups = examples["groups"]
    if (not isinstance(groups, list) or not groups
        or not all(_strings(g, 2) for g in groups)):
      raise RewriteError(f"{where}: source {source!r}'s groups must be a "
                         f"non-empty list of lists of two or more captions")
    return {"groups": [tuple(" ".join(c.split()) for c in g)
                       for g in groups]}
  if (not isinstance(examples, list) or not examples
      or not all(_strings(p, 2) and len(p) == 2 for p in examples)):
    raise RewriteError(f"{where}: source {source!r} must be a non-empty "
                       f"list of [input, output] string pairs, or "
                       f'{{"groups": [[caption, caption, ...], ...]}}')
  return [(a.strip(), b.strip()) for a, b in examples]


def example_texts(examples) -> list[str]:
  """Every string of one source's examples (a model that repeats one has
  copied the prompt)."""
  if isinstance(examples, dict):
    return [c for group in examples["groups"] for c in group]
  return [s for pair in examples for s in pair]


def draw_examples(examples, rng: np.random.Generator,
                  shots: int) -> list[tuple[str, str]]:
  """`shots` (input, output) pairs of one source, drawn without replacement
  (all of them if fewer). From groups (LaCLIP's COCO set), `shots` groups,
  and of each two distinct captions in random order, as LaCLIP draws
  them."""
  if isinstance(examples, dict):
    groups = examples["groups"]
    chosen = rng.choice(len(groups), size=min(shots, len(groups)),
                        replace=False)
    pairs = []
    for g in chosen:
      first, second = rng.choice(len(groups[g]), size=2, replace=False)
      pairs.append((groups[g][first], groups[g][second]))
    return pairs
  chosen = rng.choice(len(examples), size=min(shots, len(examples)),
                      replace=False)
  return [examples[i] for i in chosen]


def unit_rng(seed: int, *keys) -> np.random.Generator:
  """A generator determined by `seed` and `keys` (ints or strings) alone, so
  that a resumed run draws what the uninterrupted one drew."""
  digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
  return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def build_prompt(examples, caption: str, rng: np.random.Generator,
                 shots: int = SHOTS) -> str:
  """LaCLIP's prompt: the header, `shots` example pairs of one source
  (`draw_examples`), then `caption =>`."""
  lines = [PROMPT_HEADER, ""]
  for source_text, target_text in draw_examples(examples, rng, shots):
    lines += [f"{source_text} => {target_text}", ""]
  lines.append(f"{' '.join(caption.split())} =>")
  return "\n".join(lines)


def clean_output(generated: str, caption: str, known_texts: list[str],
                 max_words: int) -> tuple[str | None, str | None]:
  """A model's continuation → (rewrite, None), or (None, drop reason).

  The rewrite is the first line, stripped of spaces and quotes. It is
  dropped as "empty", "no_letters", "too_long" (over `max_words` words, or
  no line end before the token limit: see `generate`), or "repeats_prompt"
  (the caption itself, one of `known_texts` (the examples'), or more
  prompt syntax).
  """
  line = generated.split("\n", 1)[0].strip().strip("\"'“”").strip()
  if not line:
    return None, "empty"
  if not re.search(r"[^\W\d_]", line):
    return None, "no_letters"
  if len(line.split()) > max_words:
    return None, "too_long"
  folded = " ".join(line.lower().split()).rstrip(".")
  known = {" ".join(s.lower().split()).rstrip(".")
           for s in known_texts} | {
               " ".join(caption.lower().split()).rstrip(".")}
  if "=>" in line or folded in known or line.startswith(PROMPT_HEADER):
    return None, "repeats_prompt"
  return line, None


# The rule-based rewriter: meaning-keeping edits of short descriptive
# captions (the embedded set's). Each rewrite applies one template and the
# synonyms, chosen by the caption's own seeded draw.
_SYNONYMS = {"large": ("big", "large"), "small": ("little", "small"),
             "picture": ("picture", "image"),
             "shape": ("shape", "figure"), "shapes": ("shapes", "figures")}
_TEMPLATES = ("{}", "an image of {}", "a drawing of {}",
              "{}, on a plain background", "a simple drawing showing {}",
              "we can see {}")


def _swap_and(caption: str) -> str:
  """"X and Y" → "Y and X" when both sides are sized objects ("a large
  ...", "a small ..."), whose order then carries no meaning; "an image of
  X and Y" → "an image of Y and X" likewise."""
  parts = caption.split(" and ")
  sized = [re.search(r"\b(large|small|big|little)\b", p) for p in parts]
  # Without sizes on both sides, the order may be what says which is
  # larger (the embedded set lists objects largest first).
  if (len(parts) != 2 or not all(sized)
      or not re.match(r"(a|an|the) ", parts[1])):
    return caption
  framed = re.match(r"((?:a|an) (?:picture|image) of )((?:a|an|the) .*)",
                    parts[0])
  if framed:
    return f"{framed.group(1)}{parts[1]} and {framed.group(2)}"
  if re.match(r"(a|an|the) ", parts[0]) and " of " not in parts[0]:
    return f"{parts[1]} and {parts[0]}"
  return caption


def _articles(text: str) -> str:
  """"a" before a vowel → "an", and "an" before a consonant → "a"."""
  text = re.sub(r"\ba (?=[aeiou])", "an ", text)
  return re.sub(r"\ban (?=[^aeiou\W])", "a ", text)


def rule_rewrite(caption: str, rng: np.random.Generator) -> str:
  """One deterministic (given `rng`) paraphrase of a short caption: object
  order, synonyms, and a framing template."""
  text = " ".join(caption.split())
  if rng.random() < 0.5:
    text = _swap_and(text)
  words = [(_SYNONYMS[w][rng.integers(len(_SYNONYMS[w]))]
            if w in _SYNONYMS else w) for w in text.split(" ")]
  template = _TEMPLATES[rng.integers(len(_TEMPLATES))]
  # Only a plain object description takes a framing ("an image of an image
  # of ..." or "we can see the largest shape is ..." would not read).
  if not re.match(r"(a|an) ", text) or re.match(
      r"(a|an) (picture|image) of ", text) or ":" in text:
    template = "{}"
  return _articles(template.format(" ".join(words)))


class Store:
  """Rewrites written as they are made, so that a rerun continues.

  `OUT.partial.jsonl` starts with the run's settings, then one line per
  finished batch: {"batch": k, "rewrites": [[image id, text], ...],
  "dropped": {reason: count}}, flushed and synced. A torn last line (a run
  killed mid-write) is ignored. `finish` writes OUT ({image id: [rewrites]},
  what `data.rewrites` reads) and OUT.meta.json, then removes the partial.
  """

  def __init__(self, out: str, settings: dict):
    self.out, self.partial = out, out + ".partial.jsonl"
    self.settings = settings
    self.done: dict[int, dict] = {}
    if os.path.exists(self.partial):
      self._read()
    else:
      with open(self.partial, "w", encoding="utf-8") as f:
        f.write(json.dumps({"settings": settings}) + "\n")

  def _read(self) -> None:
    with open(self.partial, encoding="utf-8") as f:
      lines = f.read().split("\n")
    try:
      saved = json.loads(lines[0])["settings"]
    except (ValueError, KeyError, TypeError) as e:
      raise RewriteError(f"{self.partial} is not a rewrite run's progress "
                         f"file; remove it to start over") from e
    if saved != self.settings:
      changed = sorted(k for k in set(saved) | set(self.settings)
                       if saved.get(k) != self.settings.get(k))
      raise RewriteError(
          f"{self.partial} was started with other settings ({', '.join(changed)}); "
          f"rerun with the same ones, or remove it to start over")
    for line in lines[1:]:
      try:
        record = json.loads(line)
      except ValueError:
        continue  # the torn last line of a killed run
      self.done[int(record["batch"])] = record
    # Rewritten without a torn line, so later appends stay parseable;
    # replaced whole, so an interruption here loses nothing.
    with open(self.partial + ".tmp", "w", encoding="utf-8") as f:
      f.write(json.dumps({"settings": self.settings}) + "\n")
      f.writelines(json.dumps(r) + "\n" for r in self.done.values())
    os.replace(self.partial + ".tmp", self.partial)

  def add(self, batch: int, rewrites: list[tuple[str, str]],
          dropped: dict[str, int]) -> None:
    record = {"batch": batch, "rewrites": [list(r) for r in rewrites],
              "dropped": dropped}
    with open(self.partial, "a", encoding="utf-8") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()
      os.fsync(f.fileno())
    self.done[batch] = record

  def finish(self, meta: dict) -> dict:
    """Writes OUT and OUT.meta.json; returns the meta written (with the
    counts)."""
    rewrites: dict[str, list[str]] = {}
    dropped = dict.fromkeys(DROP_REASONS + ("duplicate",), 0)
    for batch in sorted(self.done):
      for image_id, text in self.done[batch]["rewrites"]:
        kept = rewrites.setdefault(image_id, [])
        if text in kept:
          dropped["duplicate"] += 1
        else:
          kept.append(text)
      for reason, count in self.done[batch]["dropped"].items():
        dropped[reason] = dropped.get(reason, 0) + count
    meta = dict(meta, settings=self.settings, dropped=dropped,
                images=len(rewrites),
                rewrites=sum(len(v) for v in rewrites.values()))
    for path, value in ((self.out, rewrites), (self.out + ".meta.json", meta)):
      with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(value, f, indent=None if value is rewrites else 1)
      os.replace(path + ".tmp", path)
    os.remove(self.partial)
    return meta


def batches(units: Iterator, batch_size: int) -> Iterator[tuple[int, list]]:
  """(batch number, up to `batch_size` units) in order."""
  batch, number = [], 0
  for unit in units:
    batch.append(unit)
    if len(batch) == batch_size:
      yield number, batch
      batch, number = [], number + 1
  if batch:
    yield number, batch
