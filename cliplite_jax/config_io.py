"""Reading and saving configs and checking user-given paths.

Workdir files go through `etils.epath`, so a workdir can be local or a
gs:// path (TensorFlow's filesystems).
"""
from __future__ import annotations

import importlib.util
import json
import os

import ml_collections
from etils import epath

CONFIG_FILE = "config.json"


class UserError(Exception):
  """Bad input from the user: the message names the problem and the fix."""


def existing_workdir(workdir: str | None) -> str:
  if not workdir:
    raise UserError("--workdir is required")
  if not epath.Path(workdir).is_dir():
    raise UserError(f"workdir {workdir} does not exist; train first: "
                    f"python -m cliplite_jax.main --config=configs/default.py "
                    f"--workdir={workdir}")
  return workdir


def load_saved(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved in WORKDIR/config.json."""
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise UserError(f"{path} not found: {workdir} is not a training workdir "
                    f"(pass --config=FILE to evaluate with a given config)")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_file(spec: str) -> ml_collections.ConfigDict:
  """`path/to/config.py[:arg]` → its `get_config(arg)`."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise UserError(f"config file {path} not found")
  module_spec = importlib.util.spec_from_file_location("_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def load_sibling(here: str, name: str,
                 arg: str | None) -> ml_collections.ConfigDict:
  """The config file `name` next to the file `here`, with argument `arg`
  (for configs built on another one)."""
  path = os.path.join(os.path.dirname(here), name)
  return load_file(f"{path}:{arg}" if arg else path)


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """big_vision-style config argument "k1=v1,k2=v2" → ConfigDict.

  Only the keys of `defaults` are allowed; each value is converted to its
  default's type. Raises UserError naming an unknown key or a bad value.
  """
  parsed = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, eq, value = item.partition("=")
    if not eq or key not in defaults:
      raise UserError(f"config argument {item!r}: expected one of "
                      f"{', '.join(f'{k}=…' for k in defaults)}")
    try:
      parsed[key] = type(defaults[key])(value)
    except ValueError as e:
      raise UserError(f"config argument {item!r}: {e}") from e
  return parsed


def save(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes WORKDIR/config.json."""
  (epath.Path(workdir) / CONFIG_FILE).write_text(
      config.to_json(indent=1, sort_keys=True))
