"""Evaluation's pre-flight: which datasets an evaluation scores and which
splits it reads, checked and opened before any work (training checks them
at start-up too, so that a run does not fail at its first evaluation)."""
from __future__ import annotations

import ml_collections

from cliplite_jax import config_io, validation


def check_evaluation(config: ml_collections.ConfigDict) -> None:
  """UserError for an unknown probe or dataset in the eval section, a
  vector-modality set under an image–text model, or two datasets scored
  under one name."""
  from cliplite_jax.data import sources  # the heavy TFDS import, late
  from cliplite_jax.models import multimodal
  from cliplite_jax.probes import registry
  reads = validation.untrained_embedding_probes(config)
  if reads:
    raise config_io.UserError(
        f"this run's critic is {config.loss.critic!r}, an MLP on the "
        f"towers' features: "
        f"the embeddings {', '.join(reads)} read were never trained; "
        f"evaluate the features, e.g. "
        f"--config.eval.probes='(\"linear\",\"svm\")'")
  unknown = sorted(set(config.eval.probes) - set(registry.PROBES))
  if unknown:
    raise config_io.UserError(f"eval.probes: unknown {unknown}; known: "
                              f"{list(registry.PROBES)}")
  for name in (config.data.name, *config.eval.get("transfer", ())):
    try:
      source, _ = sources.get(name)
    except ValueError as e:
      raise config_io.UserError(str(e)) from e
    if source.modalities and not multimodal.is_multimodal(config):
      raise config_io.UserError(
          f"{name} holds the vector modalities "
          f"{', '.join(source.modalities)}, not images: train on it with a "
          f"multi-modality config such as configs/symile_xor.py")
  for field, unset in (("transfer", "()"), ("suite", "''")):
    if multimodal.is_multimodal(config) and config.eval.get(field):
      raise config_io.UserError(
          f"eval.{field}: a multi-modality model is scored on its own "
          f"dataset only; set eval.{field}={unset}")
  validation.check_dataset_names(config)


def evaluated_datasets(config: ml_collections.ConfigDict,
                       suite_sets: list[str] | None = None
                       ) -> list[tuple[str, str, str]]:
  """(dataset name, scored split, probe-fitting split) of every dataset
  evaluated: the training dataset, then `config.eval.transfer`, then the
  sets of `eval.suite` that can be read (`suite_sets` when the caller has
  them from `probes.suite.availability`, else found here)."""
  from cliplite_jax.data import sources
  # Configs saved before transfer sets existed fitted probes on "train".
  out = [(config.data.name, config.eval.split,
          config.eval.get("fit_split", "train"))]
  names = [config.data.name, *config.eval.get("transfer", ())]
  if config.eval.get("suite"):
    if suite_sets is None:
      from cliplite_jax.probes import registry, suite
      fits = any(registry.PROBES[p].fits for p in config.eval.probes
                 if p in registry.PROBES)
      suite_sets = suite.availability(config, fits)[0]
    # A set already scored under the same name (a prepared copy in
    # eval.transfer) is not scored twice.
    shown = {sources.display_name(n) for n in names}
    names += [k for k in suite_sets if k not in shown]
  for name in names[1:]:
    source, _ = sources.get(name)
    out.append((name, source.eval_split, source.fit_split))
  return out


def evaluation_reads(config: ml_collections.ConfigDict
                     ) -> list[tuple[str, str]]:
  """The (dataset, split) pairs evaluation reads: each dataset's scored
  split when a configured probe supports it, its fitting split when one of
  those probes fits."""
  from cliplite_jax.data import sources
  from cliplite_jax.probes import registry
  reads = []
  for name, split, fit_split in evaluated_datasets(config):
    probes = set(config.eval.probes) & sources.get(name)[0].probes
    reads += [(name, split)] if probes else []
    reads += ([(name, fit_split)]
              if any(registry.PROBES[p].fits for p in probes) else [])
  return reads


def check_reads(reads: list[tuple[str, str]], data_dir: str | None) -> None:
  """Opens each (dataset, split): a missing split is a UserError, an
  unprepared or damaged dataset a DatasetNotPreparedError, both naming the
  fix."""
  from cliplite_jax.data import sources
  for name, split in reads:
    try:
      sources.open_split(name, split, data_dir)
    except ValueError as e:
      raise config_io.UserError(str(e)) from e
