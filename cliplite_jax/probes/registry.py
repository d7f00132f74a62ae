"""The probes, by name: which datasets each can score and how it scores one.

One table that everything reads: `evaluate` runs every probe in
`eval.probes` that a dataset supports, `sources.Source.probes` says which
those are, validation checks `eval.probes` against the names, evaluation's
pre-flight opens the fit split only for probes that fit, and the training
curves draw every probe's metrics in one panel. A new probe is one module
in probes/ with a `score(dataset)` function, and one row here.

`score` receives the dataset being evaluated (evaluate's `DatasetView`):
`name` (as in metric keys), `source` (its `sources.Source`), `config`,
`test` (the scored split's image "features" [N, F], "embeddings" [N, D],
"index" and the source's labels), `captions()` (caption embeddings [M, D]
and each one's image row, int32 [M]), `embed_texts(texts, what)` ([T, D]),
`clean(text)` (a prompt cleaned as captions are) and `fit_and_scored()`
(the fitting split's and the scored split's features, never the same
images). It returns {"<probe>/<name>/<metric>": float}.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from cliplite_jax.probes import (fewshot, linear, modality_gap, retrieval, svm,
                                 zeroshot)


@dataclasses.dataclass(frozen=True)
class Probe:
  """supports(source) → bool; score(dataset view) → metrics; fits: whether
  it trains on the dataset's fit split (evaluation reads that split too);
  embeddings: whether it scores the heads' embeddings (else the towers'
  features), which a model whose critic ignores them leaves untrained."""
  supports: Callable[..., bool]
  score: Callable[..., dict]
  fits: bool = False
  embeddings: bool = False


PROBES: dict[str, Probe] = {
    "retrieval": Probe(lambda s: bool(s.captions_key), retrieval.score,
                       embeddings=True),
    "gap": Probe(lambda s: bool(s.captions_key), modality_gap.score,
                 embeddings=True),
    # A multi-modality set is scored by predicting each modality from the
    # others (probes/modalities.py), under the same name.
    "zeroshot": Probe(lambda s: bool(s.zeroshot or s.modalities),
                      zeroshot.score, embeddings=True),
    "svm": Probe(lambda s: bool(s.svm_targets), svm.score, fits=True),
    "linear": Probe(lambda s: bool(s.linear_label), linear.score, fits=True),
    "fewshot": Probe(lambda s: bool(s.linear_label), fewshot.score, fits=True),
}
