r"""LaCLIP: rewrites every caption of a dataset split with a language model.

  python -m cliplite_jax.rewrite --data=NAME_OR_PATH [--split=train] \
      --model=LOCAL_HF_DIR --out=REWRITES.json [--num=4] \
      [--examples=ours|laclip|FILE] [--sources=NAME,...]
  python -m cliplite_jax.rewrite --data=shapes_captions --model=rules \
      --out=REWRITES.json

Each caption gets `--num` rewrites, the r-th prompted with `--shots`
example pairs of source r mod S (`data/rewriting.py`): our four sources, or
with `--examples=laclip` LaCLIP's (chatgpt, bard, human, coco), or those of
a file; `--sources` picks some of them. Sampled at LaCLIP's
temperature 0.9 / top-p 0.95. `--model` is a local Hugging Face causal LM
directory (any architecture transformers loads; nothing is downloaded;
needs `pip install -e ".[rewrite]"`), or `rules` for the deterministic
rule-based rewriter. The output is {image id: [rewrites]}, what
`--config.data.rewrites` reads; REWRITES.meta.json records the model,
examples, settings and what was dropped. Rerunning an interrupted command
continues where it stopped (at most one batch is lost).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time

if __name__ == "__main__":
  from cliplite_jax.training import native_logs
  native_logs.quiet()

from absl import app, flags

from cliplite_jax import cli, progress
from cliplite_jax.data import rewriting, sources

FLAGS = flags.FLAGS
RULES = "rules"
# Longer captions are cut (LaCLIP cuts over-long prompts likewise).
CAPTION_WORDS = 77


class LanguageModel:
  """A local causal LM, batched sampling (left padding)."""

  def __init__(self, path: str, device: str = "auto"):
    try:
      import torch
      import transformers
    except ImportError as e:
      raise rewriting.RewriteError(
          f"--model needs PyTorch and transformers ({e.name} is missing): "
          f"pip install -e \".[rewrite]\"") from e
    if not os.path.isfile(os.path.join(path, "config.json")):
      raise rewriting.RewriteError(f"--model {path}: no config.json (a local "
                                   f"Hugging Face model directory)")
    self._torch = torch
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if device == "auto":
      device = "cuda" if torch.cuda.is_available() else "cpu"
    self.device = device
    try:
      self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
      self.model = transformers.AutoModelForCausalLM.from_pretrained(
          path, dtype=torch.bfloat16 if device == "cuda" else torch.float32
      ).to(device).eval()
    except (OSError, ValueError, KeyError) as e:
      raise rewriting.RewriteError(f"--model {path}: {e}") from e
    self.tokenizer.padding_side = "left"
    if self.tokenizer.pad_token is None:
      if self.tokenizer.eos_token is None:
        raise rewriting.RewriteError(f"--model {path}: its tokenizer has "
                                     f"neither a pad nor an end token")
      self.tokenizer.pad_token = self.tokenizer.eos_token
    self.description = {
        "path": os.path.abspath(path),
        "model_type": self.model.config.model_type,
        "parameters": sum(p.numel() for p in self.model.parameters())}

  def generate(self, prompts: list[str], seed: int, temperature: float,
               top_p: float, max_new_tokens: int) -> list[tuple[str, bool]]:
    """(continuation, finished) per prompt; finished is False when the
    token limit came before a line end or the end token."""
    torch = self._torch
    torch.manual_seed(seed)
    encoded = self.tokenizer(prompts, return_tensors="pt",
                             padding=True).to(self.device)
    with torch.no_grad():
      out = self.model.generate(
          **encoded, do_sample=True, temperature=temperature, top_p=top_p,
          max_new_tokens=max_new_tokens,
          pad_token_id=self.tokenizer.pad_token_id)
    new = out[:, encoded["input_ids"].shape[1]:]
    texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
    eos = self.tokenizer.eos_token_id
    results = []
    for text, tokens in zip(texts, new.tolist()):
      ended = eos in tokens or len(tokens) < max_new_tokens
      results.append((text, "\n" in text or ended))
    return results


def units(name: str, split: str, data_dir: str | None, num: int,
          source_names: list[str]):
  """(image id, caption, example source name, (index, caption number,
  rewrite number)) for every rewrite to make, in split order."""
  source, _ = sources.get(name)
  examples = sources.open_split(name, split, data_dir)
  for index in range(len(examples)):
    example = examples[index]
    image = sources.image_id(source, index, example)
    for j, caption in enumerate(sources.decode_captions(source, example)):
      if isinstance(caption, bytes):
        caption = caption.decode("utf-8", errors="replace")
      caption = " ".join(caption.split()[:CAPTION_WORDS])
      for r in range(num):
        yield image, caption, source_names[r % len(source_names)], (index, j, r)


def estimate_total(name: str, split: str, data_dir: str | None,
                   num: int) -> int:
  """Rewrites to make: examples × the mean caption count of the first
  1,000 (exact for smaller splits) × num."""
  source, _ = sources.get(name)
  examples = sources.open_split(name, split, data_dir)
  sample = min(len(examples), 1000)
  captions = sum(len(sources.decode_captions(source, examples[i]))
                 for i in range(sample))
  return round(len(examples) * captions / max(sample, 1)) * num


def settings_from_flags(name: str, examples: dict) -> dict:
  digest = hashlib.sha256(json.dumps(examples, sort_keys=True).encode())
  model = FLAGS.model if FLAGS.model == RULES else os.path.abspath(FLAGS.model)
  settings = {"data": name, "split": FLAGS.split, "model": model,
              "num": FLAGS.num, "examples_sha256": digest.hexdigest(),
              "shots": FLAGS.shots, "temperature": FLAGS.temperature,
              "top_p": FLAGS.top_p, "max_new_tokens": FLAGS.max_new_tokens,
              "max_words": FLAGS.max_words, "batch_size": FLAGS.batch_size,
              "seed": FLAGS.seed}
  if FLAGS.sources:  # their order says which rewrite uses which
    settings["sources"] = list(examples)
  return settings


def check_flags() -> None:
  if FLAGS.num < 1 or FLAGS.shots < 1 or FLAGS.batch_size < 1:
    raise rewriting.RewriteError("--num, --shots and --batch_size must be ≥ 1")
  if not 0 < FLAGS.temperature or not 0 < FLAGS.top_p <= 1:
    raise rewriting.RewriteError("--temperature must be > 0 and --top_p in "
                                 "(0, 1]")
  parent = os.path.dirname(os.path.abspath(FLAGS.out))
  if not os.path.isdir(parent):
    raise rewriting.RewriteError(f"--out {FLAGS.out}: {parent} is not a "
                                 f"directory")
  if os.path.exists(FLAGS.out):
    raise rewriting.RewriteError(f"--out {FLAGS.out} exists: remove it or "
                                 f"name another file")
  given = [f"--{f}" for f in ("examples", "sources") if FLAGS[f].present]
  if FLAGS.model == RULES and given:
    raise rewriting.RewriteError(
        f"{' and '.join(given)}: in-context examples prompt a language "
        f"model; --model=rules rewrites without them")


def run() -> dict:
  check_flags()
  name = sources.canonical(FLAGS.data)
  try:
    source, _ = sources.get(name)
  except ValueError as e:  # unknown name
    raise rewriting.RewriteError(f"--data {FLAGS.data}: {e}") from e
  if source.captions_key is None:
    raise rewriting.RewriteError(f"--data {FLAGS.data} has no captions")
  if source.id_key is None and any(c in FLAGS.split for c in "[+"):
    raise rewriting.RewriteError(
        f"--split {FLAGS.split}: {FLAGS.data}'s images are keyed by their "
        f"position in the whole split; rewrite a whole split")
  try:
    total = estimate_total(name, FLAGS.split, FLAGS.data_dir, FLAGS.num)
  except ValueError as e:  # unknown split
    raise rewriting.RewriteError(f"--data {FLAGS.data}: {e}") from e
  examples = rewriting.read_examples(
      FLAGS.examples, FLAGS.sources.split(",") if FLAGS.sources else None)
  # The model loads before the progress file exists: a bad --model leaves
  # nothing behind.
  model = None if FLAGS.model == RULES else LanguageModel(FLAGS.model,
                                                          FLAGS.device)
  store = rewriting.Store(FLAGS.out, settings_from_flags(name, examples))
  done_before = sum(len(r["rewrites"]) + sum(r["dropped"].values())
                    for r in store.done.values())
  if store.done:
    print(f"continuing: {len(store.done)} batches ({done_before} rewrites) "
          f"done before", file=sys.stderr)
  meter = progress.Progress("rewrites", total - done_before)
  start = time.time()
  for number, batch in rewriting.batches(
      units(name, FLAGS.split, FLAGS.data_dir, FLAGS.num, list(examples)),
      FLAGS.batch_size):
    if number in store.done:
      continue
    rewrites, dropped = _rewrite_batch(model, examples, number, batch)
    store.add(number, rewrites, dropped)
    meter.add(len(batch))
  elapsed = time.time() - start
  made = meter.done
  meta = store.finish({
      "model": model.description if model else RULES,
      "prompt_header": rewriting.PROMPT_HEADER, "examples": examples,
      "seconds": round(elapsed, 1),
      "rewrites_per_s": round(made / elapsed, 2) if elapsed > 0 else None})
  return meta


def _rewrite_batch(model, examples, number, batch):
  """(kept [(image id, rewrite)], {drop reason: count}) of one batch."""
  dropped = dict.fromkeys(rewriting.DROP_REASONS, 0)
  if model is None:
    outputs = [(rewriting.rule_rewrite(caption, rewriting.unit_rng(
        FLAGS.seed, *key)), True) for _, caption, _, key in batch]
  else:
    prompts = [rewriting.build_prompt(
        examples[source], caption, rewriting.unit_rng(FLAGS.seed, *key),
        FLAGS.shots) for _, caption, source, key in batch]
    outputs = model.generate(
        prompts, seed=int(rewriting.unit_rng(FLAGS.seed, "batch", number)
                          .integers(2**31)),
        temperature=FLAGS.temperature, top_p=FLAGS.top_p,
        max_new_tokens=FLAGS.max_new_tokens)
  kept = []
  for (image, caption, source, _), (text, finished) in zip(batch, outputs):
    known = [] if model is None else rewriting.example_texts(
        examples[source])
    rewrite, reason = rewriting.clean_output(text, caption, known,
                                             FLAGS.max_words)
    if rewrite is not None and not finished:
      rewrite, reason = None, "too_long"
    if rewrite is None:
      dropped[reason] += 1
    else:
      kept.append((image, rewrite))
  return kept, dropped


def main(argv):
  def body():
    meta = run()
    drops = ", ".join(f"{v} {k}" for k, v in meta["dropped"].items() if v)
    print(f"wrote {meta['rewrites']} rewrites of {meta['images']} images to "
          f"{FLAGS.out} (dropped: {drops or 'none'}); "
          f"{FLAGS.out}.meta.json records the model and prompts")
  cli.run("cliplite_jax.rewrite", argv, body,
          (rewriting.RewriteError, sources.DatasetNotPreparedError),
          interrupted=lambda e: sys.exit(
              "\ncliplite_jax.rewrite: interrupted; rerun the same command "
              "to continue"))


if __name__ == "__main__":
  flags.DEFINE_string("data", None, "Dataset: a TFDS name or a prepared "
                      "directory (as data.name).")
  flags.DEFINE_string("split", "train", "Split whose captions to rewrite.")
  flags.DEFINE_string("data_dir", None, "TFDS data_dir (default TFDS's).")
  flags.DEFINE_string("model", None, "A local Hugging Face causal LM "
                      "directory, or 'rules'.")
  flags.DEFINE_string("out", None, "The rewrites JSON file to write.")
  flags.DEFINE_integer("num", 4, "Rewrites per caption (one per example "
                       "source, cycling).")
  flags.DEFINE_string("examples", "ours", "In-context examples: 'ours', "
                      "'laclip' (LaCLIP's ChatGPT, Bard, human and COCO "
                      "sets), or a JSON file {source: [[input, output], "
                      "...]}.")
  flags.DEFINE_string("sources", "", "Comma-separated sources of --examples "
                      "to use, in this order (default: all).")
  flags.DEFINE_integer("shots", rewriting.SHOTS, "Example pairs per prompt.")
  flags.DEFINE_float("temperature", rewriting.TEMPERATURE, "Sampling "
                     "temperature.")
  flags.DEFINE_float("top_p", rewriting.TOP_P, "Nucleus sampling mass.")
  flags.DEFINE_integer("max_new_tokens", rewriting.MAX_NEW_TOKENS,
                       "Token limit of one rewrite.")
  flags.DEFINE_integer("max_words", 60, "Longer rewrites are dropped.")
  flags.DEFINE_integer("batch_size", 32, "Prompts per generate call.")
  flags.DEFINE_integer("seed", 0, "Seed of the example draws and sampling.")
  flags.DEFINE_string("device", "auto", "torch device (auto: cuda if any).")
  flags.mark_flags_as_required(["data", "model", "out"])
  app.run(main)
