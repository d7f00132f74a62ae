"""What a probe reads of one evaluated dataset (`probes.registry`).

`DatasetView` extracts each thing once, on first use: the scored split's
image features and embeddings, its captions' embeddings, the fitting
split's features (with a part held out when the two splits overlap), and
text embeddings of prompts. A non-finite feature or embedding is a
UserError: a NaN score would rank as no score should, so it never becomes a
metric.
"""
from __future__ import annotations

import functools

import ml_collections
import numpy as np
from jax.sharding import Mesh

from cliplite_jax import config_io

from cliplite_jax import features
from cliplite_jax.data import eval_input, sources, text as text_lib
from cliplite_jax.probes import held_out


def require_finite(arrays: dict, what: str) -> None:
  """UserError if "features" or "embeddings" in `arrays` has a NaN or an
  infinity in any row."""
  for key in ("features", "embeddings"):
    if key not in arrays:
      continue
    values = np.asarray(arrays[key])
    rows = int(np.sum(~np.all(np.isfinite(values), axis=-1)))
    if rows:
      raise config_io.UserError(
          f"{rows} of {len(values)} {what} have non-finite {key}: the "
          f"checkpoint's weights are damaged or diverged; no metric computed")


class DatasetView:
  """One dataset (`dataset`, a name `sources.get` knows) as the probes see
  it: scored on `split`, probes fitted on `fit_split`; `encoders` are
  `features.make_encoders`' (image_fn, text_fn)."""

  def __init__(self, config: ml_collections.ConfigDict, dataset: str,
               split: str, fit_split: str, encoders, tokenizer, mesh: Mesh):
    self.config = config
    self.source, _ = sources.get(dataset)
    self.name = sources.display_name(dataset)
    self._dataset, self._split, self._fit_split = dataset, split, fit_split
    self._image_fn, self._text_fn = encoders
    self._tokenizer, self._mesh = tokenizer, mesh

  def _extract(self, split: str) -> dict[str, np.ndarray]:
    out = features.extract_images(
        self._image_fn, self._dataset, split, self.config.data.data_dir,
        self.config.data.image_size, self.config.eval.batch_size, self._mesh,
        self.config.data.num_threads)
    require_finite(out, f"{self._dataset} {split} images")
    return out

  @functools.cached_property
  def test(self) -> dict[str, np.ndarray]:
    """The scored split's usable images: "features" float32 [N, F],
    "embeddings" float32 [N, D], "index" int32 [N] and the labels."""
    return self._extract(self._split)

  def clean(self, text: str) -> str:
    """`text` cleaned as training cleaned captions."""
    return text_lib.clean_caption(text, self.config.data.max_words)

  def embed_texts(self, texts: list[str], what: str) -> np.ndarray:
    """Text embeddings float32 [T, D] of `texts` (already cleaned)."""
    emb = features.batched_apply(
        self._text_fn, text_lib.tokenize(self._tokenizer, texts),
        self.config.eval.batch_size, self._mesh)
    require_finite({"embeddings": emb}, f"{self._dataset} {what}")
    return emb

  def captions(self) -> tuple[np.ndarray, np.ndarray]:
    """The scored split's captions: embeddings float32 [M, D] and each
    one's row in `test`, int32 [M]. Captions of images left out of `test`
    (unusable) are left out too."""
    return self._captions

  @functools.cached_property
  def _captions(self) -> tuple[np.ndarray, np.ndarray]:
    texts, owner = eval_input.captions(
        self.source, sources.open_split(self._dataset, self._split,
                                        self.config.data.data_dir),
        self.config.data.max_words)
    keep = np.isin(owner, self.test["index"])
    caption_image = np.searchsorted(self.test["index"],
                                    owner[keep]).astype(np.int32)
    emb = self.embed_texts([t for t, k in zip(texts, keep) if k],
                           f"{self._split} captions")
    return emb, caption_image

  def fit_and_scored(self) -> tuple[dict, dict]:
    """(fitting images, scored images) for probes that train: never the
    same images (overlapping splits hold a part out, `held_out`)."""
    return self._fit_and_scored

  @functools.cached_property
  def _fit_and_scored(self) -> tuple[dict, dict]:
    fit = (self.test if self._fit_split == self._split
           else self._extract(self._fit_split))
    return held_out.fit_and_scored(self._dataset, self._split,
                                   self._fit_split, fit, self.test)
