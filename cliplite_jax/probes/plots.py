"""Pictures of a run: a retrieval gallery and training curves (PNG)."""
from __future__ import annotations

import json
import textwrap

import matplotlib

matplotlib.use("Agg")  # files only; no display on a training host
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from etils import epath  # noqa: E402

from cliplite_jax.probes import registry  # noqa: E402

CORRECT, WRONG, NEUTRAL = "#1a9850", "#d73027", "#808080"


def gallery_png(path: str, queries: list[str], images: list[list[np.ndarray]],
                correct: list[list[bool]] | None, title: str,
                labels: list[list[str]] | None = None) -> None:
  """One row per caption query: the caption, then its retrieved images in
  rank order, framed green when the image is the caption's own, else red
  (grey when `correct` is None).

  Args:
    queries: Q captions; images: per query, K uint8 [H, W, 3] images;
    correct: per query, K bools, or None where correctness is unknown;
    labels: per query, K texts under the images (default: whether each
      is the caption's own).
  """
  k = max(len(row) for row in images)
  fig, axes = plt.subplots(len(queries), k + 1, squeeze=False,
                           figsize=(2.0 * (k + 1.8), 2.1 * len(queries)),
                           gridspec_kw={"width_ratios": [1.8] + [1] * k})
  correct = correct or [None] * len(queries)
  for q, (query, row, hits) in enumerate(zip(queries, images, correct)):
    text_ax = axes[q][0]
    text_ax.axis("off")
    text_ax.text(0.0, 0.5, textwrap.fill(f"“{query}”", 28), va="center",
                 ha="left", fontsize=10, transform=text_ax.transAxes)
    for rank in range(k):
      ax = axes[q][rank + 1]
      ax.set_xticks([])
      ax.set_yticks([])
      if rank >= len(row):
        ax.axis("off")
        continue
      ax.imshow(row[rank])
      hit = None if hits is None else hits[rank]
      colour = NEUTRAL if hit is None else CORRECT if hit else WRONG
      for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(4)
      if q == 0:
        ax.set_title(f"top {rank + 1}", fontsize=9)
      label = (labels[q][rank] if labels else
               "" if hit is None else "its image" if hit else "another image")
      ax.set_xlabel(textwrap.fill(textwrap.shorten(label, 44, placeholder="…"), 24),
                    color=colour, fontsize=9)
  fig.suptitle(title, fontsize=12)
  fig.tight_layout()
  with epath.Path(path).open("wb") as f:
    fig.savefig(f, format="png", dpi=100)
  plt.close(fig)


def read_metrics(path: str) -> list[dict]:
  """The records of a metrics.jsonl (one JSON object per line)."""
  return [json.loads(line) for line in epath.Path(path).read_text().splitlines()
          if line.strip()]


_PANELS = (
    ("training loss", lambda k: k.startswith("loss/")),
    ("evaluation", lambda k: k.split("/")[0] in registry.PROBES),
    ("learning rate and temperature",
     lambda k: k.startswith("lr/") or k == "temperature"),
)


def curves_png(path: str, records: list[dict], title: str) -> None:
  """Loss, evaluation metrics and schedules against the step, one panel
  each (panels with nothing logged are left out)."""
  panels = []
  for name, wanted in _PANELS:
    keys = sorted({k for r in records for k in r if wanted(k)})
    if keys:
      panels.append((name, keys))
  fig, axes = plt.subplots(1, max(1, len(panels)), squeeze=False,
                           figsize=(5.5 * max(1, len(panels)), 4))
  for ax, (name, keys) in zip(axes[0], panels):
    for key in keys:
      points = [(r["step"], r[key]) for r in records if key in r]
      steps, values = zip(*points)
      ax.plot(steps, values, marker="o" if len(points) < 20 else None,
              markersize=3, label=key)
    ax.set_title(name)
    ax.set_xlabel("step")
    if name.startswith("learning"):
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  with epath.Path(path).open("wb") as f:
    fig.savefig(f, format="png", dpi=100)
  plt.close(fig)
