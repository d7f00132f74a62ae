"""A CLIP-style byte-level BPE tokenizer trained from scratch on captions."""
from __future__ import annotations

from typing import Iterable

from tokenizers import (Regex, Tokenizer, decoders, models, normalizers,
                        pre_tokenizers, processors, trainers)

START, END = "<|startoftext|>", "<|endoftext|>"


def train_clip_bpe(captions: Iterable[str], vocab_size: int) -> Tokenizer:
  """A byte-level BPE tokenizer learned from `captions` by HF's BpeTrainer.

  As CLIP's: NFC, whitespace runs collapsed, stripped, lower-cased; every
  caption wrapped as <|startoftext|> … <|endoftext|>, the two specials the
  last two ids (CLIP's 49406, 49407: the end token has the largest id, so
  legacy argmax(input_ids) pooling finds it too). Unlike CLIP, a word's
  boundary is GPT-2's leading "Ġ" (every word gets one) rather than a
  "</w>" suffix: the 256-byte alphabet then spells any text, so nothing is
  ever unknown and `decode(encode(s).ids)` gives back the normalised s.

  `vocab_size` counts the specials; a small corpus may stop short of it
  (`get_vocab_size()` says). Unpadded: `data.text.fixed_length` pads (id 0)
  and truncates, keeping <|endoftext|> last.
  """
  alphabet = pre_tokenizers.ByteLevel.alphabet()
  if vocab_size < len(alphabet) + 2:
    raise ValueError(f"vocab_size {vocab_size} is below the byte alphabet "
                     f"and the two specials ({len(alphabet) + 2})")
  tokenizer = Tokenizer(models.BPE())
  tokenizer.normalizer = normalizers.Sequence([
      normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
      normalizers.Strip(), normalizers.Lowercase()])
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
  # The ByteLevel decoder joins the tokens; Strip drops the added prefix
  # space.
  tokenizer.decoder = decoders.Sequence([decoders.ByteLevel(),
                                         decoders.Strip(" ", 1, 0)])
  trainer = trainers.BpeTrainer(vocab_size=vocab_size - 2,
                                initial_alphabet=alphabet,
                                show_progress=False)
  tokenizer.train_from_iterator(captions, trainer)
  # Added after training, so they take the last ids.
  tokenizer.add_special_tokens([START, END])
  tokenizer.post_processor = processors.TemplateProcessing(
      single=f"{START} $A {END}",
      special_tokens=[(t, tokenizer.token_to_id(t)) for t in (START, END)])
  return tokenizer
