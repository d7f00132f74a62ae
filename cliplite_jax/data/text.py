"""Caption cleaning and tokenisation (HF `tokenizers` WordPiece)."""
from __future__ import annotations

import collections
import json
import os
import re
import string
from typing import Iterable, Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import processors

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Symile's token for a missing text modality (its Symile-M3 code adds it to
# the tokenizer, and a missing text is this token alone).
MISSING_TOKEN = "[MISSING]"
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")
_LEFT_RIGHT = re.compile(r"\b(left|right)\b")


def clean_caption(caption: str | bytes, max_words: int = 30) -> str:
  """Lower-cases, strips punctuation, keeps at most `max_words` words."""
  if isinstance(caption, bytes):
    caption = caption.decode("utf-8", errors="replace")
  words = _PUNCTUATION.sub(" ", caption.lower()).split()
  return " ".join(words[:max_words])


def swap_left_right(caption: str) -> str:
  """Swaps the words "left" and "right" (for horizontally flipped images)."""
  return _LEFT_RIGHT.sub(
      lambda m: "right" if m.group(1) == "left" else "left", caption)


def train_wordpiece(captions: Iterable[str], vocab_size: int) -> Tokenizer:
  """A BERT-style uncased WordPiece tokenizer whose vocabulary comes from
  `captions`, deterministically.

  The vocabulary is the special tokens, every character seen (as a word start
  "c" and as a continuation "##c", so any word can be spelled), then whole
  words by descending count (ties alphabetical) up to `vocab_size` (raised to
  fit the characters if needed). HF's WordPiece trainer picks a different
  vocabulary from run to run, which would break bit-exact reproduction; the
  tokenizer itself (normaliser, pre-tokeniser, greedy longest-match) is HF's.
  """
  normalizer, pre_tokenizer = _bert_normalizer(), _bert_pre_tokenizer()
  counts = collections.Counter()
  for caption in captions:
    words = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(caption))
    counts.update(word for word, _ in words)
  chars = sorted({c for word in counts for c in word})
  vocab = list(SPECIAL_TOKENS) + chars + [f"##{c}" for c in chars]
  taken = set(vocab)
  for word, _ in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0])):
    if len(vocab) >= vocab_size:
      break
    if word not in taken:
      vocab.append(word)
      taken.add(word)
  return _bert_uncased(models.WordPiece(
      {token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))


def _bert_normalizer():
  return normalizers.BertNormalizer(lowercase=True)


def _bert_pre_tokenizer():
  return pre_tokenizers.BertPreTokenizer()


def _bert_uncased(wordpiece: models.WordPiece) -> Tokenizer:
  """`wordpiece` inside BERT's uncased pipeline: normaliser, pre-tokeniser,
  WordPiece decoder and [CLS] … [SEP] around each caption."""
  tokenizer = Tokenizer(wordpiece)
  tokenizer.normalizer = _bert_normalizer()
  tokenizer.pre_tokenizer = _bert_pre_tokenizer()
  tokenizer.decoder = decoders.WordPiece()
  cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
  tokenizer.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
  return tokenizer


def with_missing_token(tokenizer: Tokenizer) -> Tokenizer:
  """`tokenizer` with `MISSING_TOKEN` as one special token (never split,
  kept when decoding is asked to keep specials), appended to its vocabulary
  unless already there, as Symile adds it."""
  tokenizer.add_special_tokens([MISSING_TOKEN])
  return tokenizer


def load_tokenizer(path: str, max_tokens: int) -> Tokenizer:
  """A local HF tokenizer, padding/truncating to `max_tokens`.

  `path` is a tokenizer.json, a BERT vocab.txt, or a directory holding either
  (e.g. a downloaded bert-base-uncased); a vocab.txt becomes an uncased BERT
  WordPiece tokenizer with [CLS] … [SEP]. Raises FileNotFoundError naming
  what was looked for, ValueError for a tokenizer.json that does not
  parse.
  """
  if os.path.isdir(path):
    for name in ("tokenizer.json", "vocab.txt"):
      if os.path.exists(os.path.join(path, name)):
        path = os.path.join(path, name)
        break
    else:
      raise FileNotFoundError(f"{path} has neither tokenizer.json nor vocab.txt")
  if not os.path.exists(path):
    raise FileNotFoundError(f"tokenizer {path} does not exist")
  if path.endswith(".txt"):
    tokenizer = _bert_uncased(models.WordPiece.from_file(path,
                                                         unk_token="[UNK]"))
  else:
    try:
      tokenizer = Tokenizer.from_file(path)
    except Exception as e:  # the tokenizers library raises its own kinds
      raise ValueError(f"{path} is not a readable tokenizer.json "
                       f"({str(e).splitlines()[0] if str(e) else e!r})") from e
    pad = _configured_pad(os.path.dirname(path), tokenizer)
    if pad is not None and tokenizer.padding is None:
      tokenizer.enable_padding(pad_id=tokenizer.token_to_id(pad),
                               pad_token=pad)
  return fixed_length(tokenizer, max_tokens)


def _configured_pad(directory: str, tokenizer: Tokenizer) -> str | None:
  """The pad token that tokenizer_config.json or special_tokens_map.json
  beside a tokenizer.json names, or failing those a model config.json's
  (text_config.)pad_token_id, if it is in the vocabulary (SigLIP pads with
  "</s>", which its text tower attends to)."""
  def read(name):
    try:
      with open(os.path.join(directory, name)) as f:
        found = json.load(f)
    except (OSError, ValueError):
      return {}
    return found if isinstance(found, dict) else {}
  for name in ("tokenizer_config.json", "special_tokens_map.json"):
    pad = read(name).get("pad_token")
    if isinstance(pad, dict):
      pad = pad.get("content")
    if isinstance(pad, str) and tokenizer.token_to_id(pad) is not None:
      return pad
  model = read("config.json")
  pad_id = (model.get("text_config") or model).get("pad_token_id")
  if isinstance(pad_id, int) and not isinstance(pad_id, bool):
    return tokenizer.id_to_token(pad_id)
  return None


def fixed_length(tokenizer: Tokenizer, max_tokens: int) -> Tokenizer:
  """Makes `tokenizer` pad and truncate every encoding to `max_tokens`.

  It pads with the pad token it already has (a released tokenizer's, or
  the one saved with a run), else "[PAD]" if in its vocabulary, else id 0.
  """
  if tokenizer.padding is not None:
    pad_id, pad_token = (tokenizer.padding["pad_id"],
                         tokenizer.padding["pad_token"])
  else:
    pad_token = "[PAD]"
    pad_id = tokenizer.token_to_id(pad_token)
    pad_id = 0 if pad_id is None else pad_id
  tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token,
                           length=max_tokens)
  tokenizer.enable_truncation(max_tokens)
  return tokenizer


def tokenize(tokenizer: Tokenizer,
             captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """Cleaned captions → (input_ids int32 [N, L], attention_mask int32 [N, L]).

  `tokenizer` must pad and truncate to a fixed length L (`load_tokenizer`).
  """
  encodings = tokenizer.encode_batch(list(captions))
  ids = np.asarray([e.ids for e in encodings], np.int32)
  mask = np.asarray([e.attention_mask for e in encodings], np.int32)
  return ids, mask
