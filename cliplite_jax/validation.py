"""Every config field's domain, checked before a run writes anything.

A value outside its domain would otherwise surface late, after the workdir
is written, as a KeyError, a ZeroDivisionError or a NaN at step 1. Each check
raises `config_io.UserError` naming the field, the value and what is valid;
all problems found are reported together.
"""
from __future__ import annotations

import importlib.util
import math
import re
import shlex

import ml_collections

from cliplite_jax import config_io, objectives
from cliplite_jax.data import augment, mixture
from cliplite_jax.models import heads, multimodal, towers

DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("sgd", "adamw")


class _Checker:
  """Collects "field: problem" lines; `raise_if_any` raises them as one."""

  def __init__(self, config: ml_collections.ConfigDict):
    self._config = config
    self.problems: list[str] = []

  def get(self, key: str, default=None):
    node = self._config
    for part in key.split("."):
      if not hasattr(node, "get") or part not in node:
        return default
      node = node[part]
    return node

  def require(self, ok: bool, key: str, expected: str) -> None:
    if not ok:
      value = self.get(key)
      if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()  # its repr spans lines
      self.problems.append(f"{key}={value!r} must be {expected}")

  def integer(self, key: str, low: int, what: str | None = None) -> None:
    """`key` is an int ≥ `low` (fields absent from old configs pass)."""
    value = self.get(key)
    if value is None:
      return
    ok = isinstance(value, int) and not isinstance(value, bool)
    self.require(ok and value >= low, key, what or f"an integer ≥ {low}")

  def number(self, key: str, low: float, high: float, low_open: bool = False,
             high_open: bool = False) -> None:
    """`key` is a number in the interval given (absent fields pass)."""
    value = self.get(key)
    if value is None:
      return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value > low if low_open else value >= low)
    ok = ok and (value < high if high_open else value <= high)
    interval = (f"{'(' if low_open else '['}{low}, {high}"
                f"{')' if high_open else ']'}")
    self.require(ok, key, f"a number in {interval}")

  def one_of(self, key: str, choices) -> None:
    value = self.get(key)
    if value is not None:
      self.require(value in choices, key, f"one of {sorted(choices)}")

  def interval(self, key: str, low: float, high: float) -> None:
    """`key` is a pair (lo, hi) with low < lo ≤ hi ≤ high."""
    value = self.get(key)
    if value is None:
      return
    ok = (isinstance(value, (tuple, list)) and len(value) == 2
          and all(isinstance(v, (int, float)) for v in value)
          and low < value[0] <= value[1] <= high)
    self.require(ok, key, f"a pair (lo, hi) with {low} < lo ≤ hi ≤ {high}")

  def raise_if_any(self) -> None:
    if self.problems:
      raise config_io.UserError("; ".join(self.problems))


def check_eval(config: ml_collections.ConfigDict) -> None:
  """The evaluation section's domains (what `evaluate` may override)."""
  c = _Checker(config)
  _eval_fields(c)
  c.raise_if_any()


def _eval_fields(c: _Checker) -> None:
  c.integer("eval.batch_size", 1)
  c.integer("eval.every_steps", 0, "an integer ≥ 0 (0: only at the end)")
  if c.get("eval.linear") is not None:  # the multi-modality configs have none
    c.integer("eval.linear.epochs", 1)
    c.integer("eval.linear.batch_size", 1)
    c.number("eval.linear.learning_rate", 0, float("inf"), low_open=True,
             high_open=True)
  if c.get("eval.fewshot") is not None:
    shots = c.get("eval.fewshot.shots")
    c.require(isinstance(shots, (tuple, list)) and shots and all(
        isinstance(k, int) and not isinstance(k, bool) and k >= 1
        for k in shots), "eval.fewshot.shots",
              "a non-empty tuple of shot counts ≥ 1")
    c.integer("eval.fewshot.seeds", 1)
    c.number("eval.fewshot.l2_reg", 0, float("inf"), low_open=True,
             high_open=True)
  # Symile's options (probes/modalities.py; multi-modality configs).
  for key, what in (("candidates", "0 (every distinct value) or a number of "
                     "candidates ≥ 2"),
                    ("bootstrap", "0 (no interval) or a number of "
                     "resamples ≥ 10")):
    value = c.get(f"eval.{key}")
    c.require(value is None or (isinstance(value, int) and not isinstance(
        value, bool) and (value == 0 or value >= (2 if key == "candidates"
                                                  else 10))),
              f"eval.{key}", what)
  c.integer("data.num_threads", 0)
  if c.get("eval.suite"):
    from cliplite_jax.data import benchmark_sets
    c.one_of("eval.suite", tuple(benchmark_sets.SUITES))
    if "zeroshot" not in (c.get("eval.probes") or ()):
      c.problems.append(
          f"eval.suite={c.get('eval.suite')!r} is a zero-shot benchmark: "
          f"add 'zeroshot' to eval.probes (now {c.get('eval.probes')!r})")


def check_dataset_names(config: ml_collections.ConfigDict) -> None:
  """UserError when two evaluated datasets (`data.name`, `eval.transfer`)
  would be scored under one name in the metric keys (`<probe>/<name>/...`,
  `sources.display_name`: e.g. two prepared sets in directories of the same
  name), so that one's scores would replace the other's. Only datasets that
  one of `eval.probes` scores count; with zero-shot, a dataset's extra tasks
  (`<name>_<task>`) count too."""
  from cliplite_jax.data import sources  # the heavy TFDS import, late
  probes = set(config.eval.probes)
  named = {}  # metric name → (field, dataset)
  entries = [("data.name", config.data.name)] + [
      ("eval.transfer", n) for n in config.eval.get("transfer", ())]
  for field, name in entries:
    source, _ = sources.get(name)
    if not probes & source.probes:
      continue
    ds = sources.display_name(name)
    keys = [ds] + ([f"{ds}_{task}" for task in list(source.zeroshot)[1:]]
                   if "zeroshot" in probes else [])
    for key in keys:
      if key not in named:
        named[key] = (field, name)
        continue
      other_field, other = named[key]
      if other == name:
        raise config_io.UserError(
            f"{name} is evaluated twice ({other_field} and {field}): its "
            f"scores would be written twice under {key}; drop it from "
            f"eval.transfer")
      rename = (f"give one prepared set's directory another name (a "
                f"symlink will do: ln -s {shlex.quote(name)} "
                f"{shlex.quote(name.rstrip('/') + '_2')}, then "
                f"name that) or drop one from eval.transfer"
                if sources.prepared.is_prepared_name(name)
                else "drop one from eval.transfer")
      raise config_io.UserError(
          f"{other_field} {other} and {field} {name} would both be scored "
          f"as {key!r} (e.g. retrieval/{key}/…), one replacing the other's "
          f"metrics; {rename}")


def check_train(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Every training field's domain and the relations between fields, for a
  run on `num_devices` devices. Raises UserError listing each problem."""
  c = _Checker(config)
  c.integer("total_steps", 1)
  c.integer("batch_size", 1)
  c.integer("accum_steps", 1)
  c.integer("log_every_steps", 1)
  c.integer("checkpoint_every_steps", 1)
  c.integer("keep_checkpoints", 1, "an integer ≥ 1 (the latest "
            "checkpoints kept; 0 would delete every one)")
  c.integer("keep_every_steps", 0, "an integer ≥ 0 (0: off)")
  c.integer("seed", 0)
  c.one_of("loss.name", tuple(objectives.OBJECTIVES))
  is_multimodal = "modalities" in config.model
  if is_multimodal:
    multimodal.check_fields(c)
  else:
    _two_tower_fields(c)
  name = c.get("loss.name")
  if name in objectives.OBJECTIVES and (
      objectives.OBJECTIVES[name].multimodal != is_multimodal):
    kinds = sorted(n for n, o in objectives.OBJECTIVES.items()
                   if o.multimodal == is_multimodal)
    model = ("the multi-modality model (model.modalities)" if is_multimodal
             else "the two-tower image–text model")
    c.problems.append(f"loss.name={name!r} does not train {model}; "
                      f"choose one of {kinds}")
  c.one_of("loss.gather", objectives.GATHERS)
  if c.get("loss.gather") == "ring" and name in objectives.OBJECTIVES:
    if not objectives.OBJECTIVES[name].ring:
      rings = sorted(n for n, o in objectives.OBJECTIVES.items() if o.ring)
      c.problems.append(
          f"loss.gather='ring' is for the objectives that gather every "
          f"embedding ({', '.join(rings)}); loss.name={name!r} gathers "
          f"{objectives.OBJECTIVES[name].gathers}")
  _critic_fields(c, name)
  _negatives_fields(c, name)
  if c.get("loss.name") in objectives.NCLIP_LOSSES:
    c.integer("loss.nclip.prototypes", 1)
    for key in ("student_temperature", "teacher_temperature"):
      c.number(f"loss.nclip.{key}", 0, float("inf"), low_open=True,
               high_open=True)
    for key in ("me_max_weight", "weight"):
      c.number(f"loss.nclip.{key}", 0, float("inf"), high_open=True)
  c.one_of("optim.name", OPTIMIZERS)
  c.number("optim.momentum", 0, 1, high_open=True)
  c.number("optim.weight_decay", 0, float("inf"), high_open=True)
  c.number("optim.clip_norm", 0, float("inf"), low_open=True, high_open=True)
  c.integer("optim.lookahead_k", 0, "an integer ≥ 0 (0: no Lookahead)")
  c.number("optim.lookahead_alpha", 0, 1, low_open=True)
  c.number("optim.ema_decay", 0, 1, high_open=True)
  c.integer("optim.warmup_steps", 0)
  c.number("data.fraction", 0, 1, low_open=True)
  if c.get("data.resize") is not None:
    c.one_of("data.resize", augment.RESIZES)
    if c.get("data.resize") == "opencv":
      if importlib.util.find_spec("cv2") is None:
        c.problems.append("data.resize='opencv' needs OpenCV: pip install "
                          "-e '.[opencv]' in the clone (or use 'pil')")
  mixture.check_fields(c, config)
  c.integer("data.num_workers", 0)
  _eval_fields(c)
  c.raise_if_any()  # the relations below assume sane values

  if not is_multimodal:
    towers.check_relations(c, "model.image", towers.IMAGE_TOWERS,
                           towers.DEFAULT_IMAGE)
    towers.check_relations(c, "model.text", towers.TEXT_TOWERS,
                           towers.DEFAULT_TEXT)
  else:
    multimodal.check_relations(c)
  total, warmup = c.get("total_steps"), c.get("optim.warmup_steps")
  c.require(warmup < total, "optim.warmup_steps",
            f"in [0, total_steps={total})")
  for group, pattern in (c.get("optim.group_regex") or {}).items():
    try:
      re.compile(pattern)
    except (re.error, TypeError) as e:
      c.problems.append(f"optim.group_regex.{group}={pattern!r} is not a "
                        f"regular expression ({e})")
  lr = c.get("optim.lr") or {}
  c.require("other" in lr, "optim.lr", "a dict with an 'other' entry")
  c.require(all(isinstance(v, (int, float)) and v >= 0 for v in lr.values()),
            "optim.lr", "a dict of finite learning rates ≥ 0")
  batch, accum = c.get("batch_size"), c.get("accum_steps", 1)
  rows = num_devices * accum
  if batch % rows:
    c.problems.append(
        f"batch_size {batch} must be a multiple of devices × accum_steps = "
        f"{num_devices} × {accum} = {rows}")
  elif (objectives.OBJECTIVES[c.get("loss.name")].rolls and batch // rows
        < (needed := len(c.get("model.modalities") or ("image", "text")))):
    c.problems.append(
        f"loss.name={c.get('loss.name')!r} takes each pair's negative from "
        f"the next row(s) of the same device's (micro-)batch, so it needs "
        f"≥ {needed} rows per device per micro-batch; batch_size {batch} on "
        f"{num_devices} devices × accum_steps {accum} gives {batch // rows} "
        f"(raise batch_size or lower accum_steps)")
  c.raise_if_any()


def _two_tower_fields(c: _Checker) -> None:
  c.number("loss.prior_weight", 0, 1)
  c.one_of("model.dtype", DTYPES)
  towers.check(c, "model.image", towers.IMAGE_TOWERS, towers.DEFAULT_IMAGE)
  towers.check(c, "model.text", towers.TEXT_TOWERS, towers.DEFAULT_TEXT)
  c.integer("model.proj_dim", 1)
  c.one_of("model.head", (*heads.HEADS, "released"))
  c.require(c.get("model.head") != "released" or c.get(
      "model.text.name", "bert") in heads.RELEASED, "model.head",
            f"not 'released' for a {c.get('model.text.name', 'bert')} text "
            f"tower (released heads: CLIP's and SigLIP's)")
  for key in ("model.pixel_mean", "model.pixel_std"):
    value = c.get(key)
    c.require(value is None or (
        isinstance(value, (tuple, list)) and len(value) == 3 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v) for v in value)
        and (key.endswith("mean") or min(value) > 0)), key,
              "3 finite numbers (R, G, B in [0, 1] units)"
              + ("" if key.endswith("mean") else ", each > 0"))
  c.number("model.init_temperature", 0, float("inf"), low_open=True,
           high_open=True)
  widths = c.get("model.prior_widths")
  c.require(isinstance(widths, (tuple, list)) and all(
      isinstance(w, int) and not isinstance(w, bool) and w >= 1
      for w in widths), "model.prior_widths", "a tuple of widths ≥ 1")
  jitter = c.get("data.color_jitter")
  if jitter is not None:
    c.require(isinstance(jitter, (tuple, list)) and len(jitter) == 4 and all(
        isinstance(v, (int, float)) and v >= 0 for v in jitter)
              and jitter[3] <= 0.5, "data.color_jitter",
              "(brightness, contrast, saturation, hue), each ≥ 0, hue ≤ 0.5")
  c.integer("data.image_size", 16)
  c.interval("data.crop_scale", 0, 1)
  c.interval("data.crop_ratio", 0, float("inf"))
  c.number("data.color_jitter_prob", 0, 1)
  c.integer("data.max_words", 1)
  c.integer("data.rewrite_min_words", 0)
  c.integer("data.max_tokens", 3, "an integer ≥ 3 ([CLS], a word, [SEP])")


def _negatives_fields(c: _Checker, loss_name: str) -> None:
  c.one_of("loss.negatives", ("rolled", "clusters"))
  if c.get("loss.negatives") != "clusters":
    return
  for key, low in (("k", 2), ("start_step", 1), ("every_steps", 1),
                   ("iterations", 1)):
    c.integer(f"loss.clusters.{key}", low)
  k, batch = c.get("loss.clusters.k"), c.get("batch_size")
  c.require(not isinstance(k, int) or not isinstance(batch, int)
            or k <= batch, "loss.clusters.k", f"at most batch_size ({batch}): "
            f"the k-means starts from k of the batch's captions")
  head = c.get("model.head") or "milinear"
  if head == "released":
    head = heads.RELEASED.get(c.get("model.text.name") or "bert", head)
  needs = {"loss.name": (loss_name, "jsd"),
           "loss.critic": (c.get("loss.critic") or "dot", "dot"),
           "accum_steps": (c.get("accum_steps") or 1, 1)}
  for key, (value, want) in needs.items():
    if value != want:
      c.problems.append(
          f"loss.negatives='clusters' needs {key}={want!r} (it clusters "
          f"the heads' caption embeddings within one JSD step), not "
          f"{value!r}")
  c.require(head != "identity", "model.head", "a projection head (milinear "
            "or linear) with loss.negatives='clusters': its centroids are "
            "model.proj_dim wide")


def _critic_fields(c: _Checker, loss_name: str) -> None:
  c.one_of("loss.critic", tuple(heads.CRITICS))
  for term in ("image_image", "text_text"):
    c.number(f"loss.{term}", 0, float("inf"), high_open=True)
  pair_terms = [t for t in ("image_image", "text_text") if c.get(f"loss.{t}")]
  critic = c.get("loss.critic") or "dot"
  if critic == "dot" and not pair_terms or critic not in heads.CRITICS:
    return
  for key in ([f"loss.{t}" for t in pair_terms]
              + (["loss.critic"] if critic != "dot" else [])):
    c.require(loss_name == "jsd", key, f"off unless loss.name is 'jsd' "
              f"(CLIP-Lite's critics and terms), not {loss_name!r}")
  for term, tower in (("image_image", "image"), ("text_text", "text")):
    c.require(term not in pair_terms
              or not c.get(f"model.{tower}.locked"), f"loss.{term}",
              f"0 with a locked {tower} tower (the term would train only "
              f"its own critic)")
  cross, pairs = heads.CRITICS[critic]
  c.require(cross == pairs or pair_terms, "loss.critic", (
      f"'{cross}' when neither loss.image_image nor loss.text_text is on: "
      f"'{critic}' also picks the critic of those terms"))
  reads = untrained_embedding_probes(c._config)
  c.require(not reads, "loss.critic", (
      f"'dot' for {', '.join(reads)}: {critic} scores image–caption pairs "
      f"with an MLP on the towers' features and leaves the embeddings they "
      f"read untrained; evaluate the features, e.g. "
      f"--config.eval.probes='(\"linear\",\"svm\")'"))


def untrained_embedding_probes(config: ml_collections.ConfigDict
                               ) -> list[str]:
  """The probes of `eval.probes` that score the heads' embeddings, when the
  image–text critic (`loss.critic`) is a concat one, which scores the
  towers' features and leaves those embeddings untrained; else []."""
  from cliplite_jax.probes import registry  # the probes' jitted code, late
  critic = config.get("loss", {}).get("critic", "dot")
  if heads.CRITICS.get(critic, ("dot",))[0] != "concat":
    return []
  probes = config.eval.get("probes", ())
  return [name for name, probe in registry.PROBES.items()
          if probe.embeddings and name in probes]


