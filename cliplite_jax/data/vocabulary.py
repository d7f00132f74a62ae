"""The run's tokenizer made for training: a WordPiece vocabulary trained on
the training captions (and their rewrites), or a local Hugging Face
tokenizer, saved as WORKDIR/tokenizer.json. Reading it back, for a resume or
a model in use, is `run_dir.read_tokenizer`."""
from __future__ import annotations

import jax
import ml_collections
import numpy as np
from etils import epath
from tokenizers import Tokenizer

from cliplite_jax import config_io, run_dir
from cliplite_jax.data import clip_tokenizer, mixture, sources, text as text_lib
from cliplite_jax.data.pipeline import load_rewrites
from cliplite_jax.models import multimodal


# A trained WordPiece vocabulary reads at most this many examples' captions
# (evenly spaced over the split): all of COCO, a bounded read of a web-scale
# set (which would rather use a pretrained tokenizer, `data.tokenizer`).
TOKENIZER_EXAMPLES = 200_000


def all_captions(config: ml_collections.ConfigDict, split: str,
                 limit: int = TOKENIZER_EXAMPLES) -> list[str]:
  """Every cleaned caption of `split` (for training a tokenizer), or of
  `limit` (`TOKENIZER_EXAMPLES`) evenly spaced examples of a larger split
  (a mixture: of each source, its weight's share of `limit`); with
  `data.rewrites`, those examples' rewrites too (training draws them).
  For a multi-modality model: its text modality's texts, as they are."""
  if mixture.is_mixture(config):  # each source's share, by its weight
    captions = []
    for name, weight in mixture.sources_of(config):
      part = config.copy_and_resolve_references()
      part.data.name, part.data.mixture = name, ""
      captions += all_captions(part, split, max(1, round(limit * weight)))
    return captions
  examples = sources.open_split(config.data.name, split, config.data.data_dir)
  if multimodal.is_multimodal(config):
    (m,) = multimodal.text_modalities(config)
    return [examples[int(i)][m] for i in _spaced(len(examples), limit)]
  source, _ = sources.get(config.data.name)
  rewrites = (load_rewrites(config.data.rewrites)
              if config.data.get("rewrites") else {})
  captions = []
  for i in _spaced(len(examples), limit):
    example = examples[int(i)]
    captions += sources.decode_captions(source, example)
    if rewrites:
      captions += rewrites.get(sources.image_id(source, int(i), example), [])
  return [text_lib.clean_caption(c, config.data.max_words) for c in captions]


def _spaced(n: int, limit: int):
  """All of range(n), or `limit` of it evenly spaced."""
  return (range(n) if n <= limit else
          np.linspace(0, n - 1, limit).astype(np.int64))


# Tokenizers trained on the training captions, by `data.tokenizer` name:
# (captions, vocab_size) → an unpadded tokenizers.Tokenizer.
TRAINED = {"wordpiece": text_lib.train_wordpiece,
           "bpe": clip_tokenizer.train_clip_bpe}


def workdir_tokenizer(config: ml_collections.ConfigDict, workdir: str,
                      create: bool = True) -> Tokenizer:
  """The run's tokenizer, WORKDIR/tokenizer.json.

  On the first run (`create`) it is made from `config.data.tokenizer`:
  "wordpiece" (or "bpe", CLIP's byte-level BPE) trains a vocabulary of at
  most `config.model.text.vocab_size` tokens on the cleaned training
  captions (deterministic, so every process builds the same one); anything
  else is a local HF tokenizer path (see
  `text.load_tokenizer`). Process 0 saves it, so a resumed or evaluated run
  tokenises exactly as training did.
  """
  saved = run_dir.read_tokenizer(config, workdir)
  if saved is not None:
    return saved
  if not create:
    raise config_io.UserError(f"{epath.Path(workdir) / run_dir.TOKENIZER_FILE}"
                              f" not found: was {workdir} trained?")
  return save_tokenizer(new_tokenizer(config), config, workdir)


def new_tokenizer(config: ml_collections.ConfigDict) -> Tokenizer:
  """The tokenizer `config.data.tokenizer` names, made without writing
  anything: a TRAINED name trains one on the training captions, anything else
  is loaded from its local path. UserError if it cannot be read or has more
  tokens than the text tower's `vocab_size`. A multi-modality model's
  tokenizer also has Symile's `[MISSING]` token (`text.MISSING_TOKEN`),
  which a trained vocabulary counts in its size."""
  fields = multimodal.text_fields(config)
  key = ("model.text" if not multimodal.is_multimodal(config) else
         f"model.towers.{multimodal.text_modalities(config)[0]}")
  missing_token = multimodal.is_multimodal(config)
  trainer = TRAINED.get(config.data.tokenizer)
  if trainer is not None:
    try:
      tokenizer = trainer(all_captions(config, config.data.train_split),
                          fields.vocab_size - missing_token)
    except ValueError as e:
      raise config_io.UserError(f"data.tokenizer={config.data.tokenizer!r}: "
                                f"{e}") from e
  else:
    tokenizer = run_dir.named_tokenizer(config)
  if missing_token:
    tokenizer = text_lib.with_missing_token(tokenizer)
  vocab = tokenizer.get_vocab_size()
  if vocab > fields.vocab_size:
    raise config_io.UserError(
        f"the tokenizer has {vocab} tokens but {key}.vocab_size is "
        f"{fields.vocab_size}; set --config.{key}.vocab_size={vocab}")
  return tokenizer


def save_tokenizer(tokenizer: Tokenizer, config: ml_collections.ConfigDict,
                   workdir: str) -> Tokenizer:
  """Writes WORKDIR/tokenizer.json (process 0); returns the tokenizer padded
  and truncated to `data.max_tokens`."""
  if jax.process_index() == 0:
    (epath.Path(workdir) / run_dir.TOKENIZER_FILE).write_text(
        tokenizer.to_str())
  return text_lib.fixed_length(tokenizer, config.data.max_tokens)
