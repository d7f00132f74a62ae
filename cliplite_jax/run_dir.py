"""A training run's directory, read: its config, its tokenizer and a
checkpoint restored onto the devices at hand.

The one path that using a model (`inference.load`, `embed`), the exports and
`evaluate` share; it imports neither the input pipeline (grain) nor the
probes, so loading a model for inference stays light.
"""
from __future__ import annotations

import os

import ml_collections
from etils import epath
from tokenizers import Tokenizer

from cliplite_jax import config_io
from cliplite_jax.training import (checkpoint, optim, parallel, recovery,
                                   state as state_lib)
from cliplite_jax.data import text as text_lib
from cliplite_jax.models import multimodal

TOKENIZER_FILE = "tokenizer.json"


def saved_config(workdir: str):
  """The config WORKDIR/config.json holds (an ml_collections.ConfigDict),
  for an image–text model; UserError (naming the fix) for a directory a
  training run did not write, a damaged config or a multi-modality model."""
  workdir = config_io.existing_workdir(workdir)
  if not epath.Path(workdir, config_io.CONFIG_FILE).exists():
    raise config_io.UserError(
        f"{workdir} is not a training workdir (it has no "
        f"{config_io.CONFIG_FILE}): name a directory that python -m "
        f"cliplite_jax.main trained into")
  config = config_io.load_saved(workdir)
  config_io.require_image_text(config, workdir)
  return config


def read_tokenizer(config: ml_collections.ConfigDict,
                   workdir: str) -> Tokenizer | None:
  """WORKDIR/tokenizer.json padded and truncated to `data.max_tokens`, or
  None when the run has not written one yet; UserError when it is damaged."""
  path = epath.Path(workdir) / TOKENIZER_FILE
  if not path.exists():
    return None
  try:
    saved = Tokenizer.from_str(path.read_text())
  except Exception as e:  # the tokenizers library raises its own kinds
    raise config_io.UserError(
        f"{path} is damaged ({str(e).splitlines()[0] if str(e) else e!r}); "
        f"it is the tokenizer this run trained with: put back a copy "
        f"(e.g. from a backup of the workdir)") from e
  return text_lib.fixed_length(saved, config.data.max_tokens)


def named_tokenizer(config: ml_collections.ConfigDict) -> Tokenizer:
  """The local tokenizer `data.tokenizer` names (`text.load_tokenizer`),
  padded and truncated to `data.max_tokens`; UserError (one line) when it
  is missing or unreadable."""
  try:
    return text_lib.load_tokenizer(config.data.tokenizer,
                                   config.data.max_tokens)
  except (OSError, ValueError) as e:
    raise config_io.UserError(f"data.tokenizer: {e}") from e


def restore(workdir: str, config: ml_collections.ConfigDict,
            step: int | None = None):
  """Restores `step` (latest if None) of WORKDIR onto the devices at hand.

  Returns (step, model, variables, tokenizer, mesh).
  """
  mesh = parallel.make_mesh()
  model = state_lib.build_model(config)
  tx = optim.build(config)
  mngr = checkpoint.manager(workdir, config, read_only=True)
  steps = mngr.all_steps()
  if not steps:
    raise config_io.UserError(
        f"no checkpoint in {os.path.join(workdir, checkpoint.FOLDER)}; "
        f"train first: python -m cliplite_jax.main --config=CONFIG "
        f"--workdir={workdir}")
  follow_latest = step is None
  step = steps[-1] if step is None else step
  if step not in steps:
    raise config_io.UserError(f"no checkpoint at step {step} in {workdir}; "
                              f"available steps: {list(steps)}")
  abstract = state_lib.abstract_state(config, model, tx, mesh)
  # Verified (a damaged step is refused), and followed to the newest step if
  # a training run prunes it meanwhile.
  step, state = recovery.restore_reading(mngr, step, abstract,
                                         follow_latest)
  tokenizer = None
  if multimodal.has_text(config):
    tokenizer = read_tokenizer(config, workdir)
    if tokenizer is None:
      raise config_io.UserError(f"{os.path.join(workdir, TOKENIZER_FILE)} "
                                f"not found: was {workdir} trained?")
  return step, model, state.variables, tokenizer, mesh


def has_checkpoint(workdir: str) -> bool:
  """Whether WORKDIR holds a checkpoint (a finished step directory)."""
  folder = epath.Path(workdir) / checkpoint.FOLDER
  return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def initial(config: ml_collections.ConfigDict):
  """The model a run of `config` starts from, untrained: the released model
  `model.init_from` names (adopted: `released.adopt`), for scoring it.
  Returns (0, model, variables, tokenizer, mesh), as `restore`."""
  if not config.model.get("init_from"):
    raise config_io.UserError(
        "no checkpoint to evaluate, and no released model to score "
        "(model.init_from); train first, or name one")
  tokenizer = named_tokenizer(config)
  mesh = parallel.make_mesh()
  model = state_lib.build_model(config)
  loaded = state_lib.checked_initial(config, model)
  variables = state_lib.initial_variables(config, model, mesh, loaded)
  return 0, model, variables, tokenizer, mesh
