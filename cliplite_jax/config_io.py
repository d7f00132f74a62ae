"""Reading and saving configs and checking user-given paths.

Workdir files go through `etils.epath`, so a workdir can be local or a
gs:// path (TensorFlow's filesystems).
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
import traceback

import ml_collections
from etils import epath

from cliplite_jax.cli import UserError  # noqa: F401  (config_io.UserError)

CONFIG_FILE = "config.json"


def check_workdir(workdir: str | None) -> None:
  """UserError unless WORKDIR is a writable directory or can become one
  (checked before a run does any work; creates nothing)."""
  if not workdir:
    raise UserError("--workdir is required")
  if "://" in workdir:
    return  # remote: its errors surface on the first write
  path = os.path.abspath(workdir)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  if not os.path.isdir(path):
    raise UserError(f"workdir {workdir}: {path} is a file, not a directory")
  if not os.access(path, os.W_OK | os.X_OK):
    raise UserError(f"workdir {workdir}: {path} is not writable")


def make_workdir(workdir: str) -> None:
  """Creates WORKDIR (and its parents); UserError naming the OS's reason."""
  try:
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create workdir {workdir}: "
                    f"{e.strerror or e}") from e


def existing_workdir(workdir: str | None) -> str:
  """WORKDIR, if it is a directory; else a UserError saying how to make it."""
  if not workdir:
    raise UserError("--workdir is required")
  if epath.Path(workdir).exists() and not epath.Path(workdir).is_dir():
    raise UserError(f"workdir {workdir} is a file, not a training directory")
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
  try:
    saved = json.loads(path.read_text())
    if not isinstance(saved, dict):
      raise ValueError("not a JSON object")
  except (ValueError, UnicodeDecodeError) as e:
    copies = sorted(epath.Path(workdir).glob("checkpoints/*/config/metadata"),
                    key=lambda p: int(p.parent.parent.name)
                    if p.parent.parent.name.isdigit() else -1)
    recover = (f"; each checkpoint keeps a copy: cp {copies[-1]} {path}"
               if copies else "")
    raise UserError(f"{path} is damaged ({e}){recover}") from e
  return ml_collections.ConfigDict(saved)


def load_file(spec: str) -> ml_collections.ConfigDict:
  """`path/to/config.py[:arg]` → its `get_config(arg)`.

  A missing file, a syntax error, a file without `get_config` or an
  exception inside it is a UserError naming the file (and line).
  """
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise UserError(f"config file {path} not found")
  if not os.path.isfile(path) or not path.endswith(".py"):
    raise UserError(f"config file {path} is not a .py file")
  module_spec = importlib.util.spec_from_file_location("_config", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except SyntaxError as e:
    raise UserError(f"config file {e.filename}, line {e.lineno}: "
                    f"{e.msg}") from e
  except UserError:
    raise
  except Exception as e:  # the user's code: whatever it raised
    raise UserError(f"config file {path}{_line_in(path, e)}: "
                    f"{type(e).__name__}: {e}") from e
  if not callable(getattr(module, "get_config", None)):
    raise UserError(f"config file {path} defines no get_config(arg) "
                    f"function (see configs/default.py)")
  try:
    config = module.get_config(arg or None)
  except UserError:
    raise
  except Exception as e:
    raise UserError(f"config file {path}{_line_in(path, e)}: get_config"
                    f"({arg or None!r}) raised {type(e).__name__}: "
                    f"{e}") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise UserError(f"config file {path}: get_config returned a "
                    f"{type(config).__name__}, not an ml_collections.ConfigDict")
  return config


def _line_in(path: str, error: BaseException) -> str:
  """", line N": the innermost frame of `error`'s traceback in `path`."""
  frames = [f for f in traceback.extract_tb(error.__traceback__)
            if os.path.abspath(f.filename) == os.path.abspath(path)]
  return f", line {frames[-1].lineno}" if frames else ""


def unknown_keys(config: ml_collections.ConfigDict,
                 keys: list[str]) -> list[str]:
  """One message per dotted key of `keys` that `config` lacks, each with the
  closest existing key as a suggestion when there is one."""
  known = sorted(_dotted_keys(config))
  problems = []
  for key in keys:
    if key in known:
      continue
    parent, _, leaf = key.rpartition(".")
    siblings = [k.rpartition(".")[2] for k in known
                if k.rpartition(".")[0] == parent]
    close = [f"{parent}.{c}" if parent else c for c in
             difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)]
    if not close:  # a misspelt section: compare whole keys
      close = difflib.get_close_matches(
          key, [k for k in known if k.count(".") == key.count(".")], n=1,
          cutoff=0.8)
    hint = (f" (did you mean {close[0]}?)" if close else
            f" ({parent or 'the config'} has {', '.join(siblings)})"
            if siblings else "")
    problems.append(f"{key}{hint}")
  return problems


def _dotted_keys(node, prefix: str = ""):
  for key in node.keys():
    value = node[key]
    yield prefix + key
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      yield from _dotted_keys(value, f"{prefix}{key}.")


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str],
                    allowed: tuple[str, ...], refused: dict[str, str]
                    ) -> ml_collections.ConfigDict:
  """`config` with `key=value` overrides applied (a copy).

  Each key must exist in `config` and start with one of `allowed` (dotted
  prefixes); a key under a prefix of `refused` is refused with that
  prefix's reason. Values are parsed as Python literals and converted to
  the type of the value they replace (a bare word is a string). Raises one
  UserError listing every bad override.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  pairs = []
  for item in overrides:
    key, eq, value = item.partition("=")
    if not eq:
      raise UserError(f"--config.{item}: expected --config.KEY=VALUE")
    pairs.append((key, value))
  problems = [f"unknown config key {p}"
              for p in unknown_keys(config, [k for k, _ in pairs])]
  for key, value in pairs:
    if any(p.startswith("unknown config key " + key) for p in problems):
      continue
    reason = next((r for prefix, r in refused.items()
                   if key == prefix or key.startswith(prefix + ".")), None)
    if reason is None and not any(key == prefix or key.startswith(prefix + ".")
                                  for prefix in allowed):
      reason = f"only {', '.join(allowed)} can be overridden here"
    if reason is not None:
      problems.append(f"--config.{key}: {reason}")
      continue
    try:
      _set(config, key, value)
    except ValueError as e:
      problems.append(f"--config.{key}={value}: {e}")
  if problems:
    raise UserError("; ".join(problems))
  return config


def _set(config: ml_collections.ConfigDict, key: str, text: str) -> None:
  *parents, leaf = key.split(".")
  node = config
  for part in parents:
    node = node[part]
  old = node[leaf]
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text  # a bare word: a string
  if isinstance(old, bool):
    if isinstance(value, str) and value.lower() in ("true", "false"):
      value = value.lower() == "true"
    if not isinstance(value, bool):
      raise ValueError("expected true or false")
  elif isinstance(old, (int, float)) and not isinstance(old, bool):
    if not isinstance(value, (int, float)) or isinstance(value, bool):
      raise ValueError(f"expected a number, like {old!r}")
    if isinstance(old, int) and value != int(value):
      raise ValueError(f"expected an integer, like {old!r}")
    value = type(old)(value)
  elif isinstance(old, (tuple, list)):
    if isinstance(value, str):
      value = (value,)
    if not isinstance(value, (tuple, list)):
      raise ValueError(f"expected a tuple, like {tuple(old)!r}")
    value = tuple(value)
  elif isinstance(old, str):
    value = text if not isinstance(value, str) else value
  elif isinstance(old, (dict, ml_collections.ConfigDict)):
    if not isinstance(value, dict):
      raise ValueError("expected a dict")
  node[leaf] = value


def load_sibling(here: str, name: str,
                 arg: str | None) -> ml_collections.ConfigDict:
  """The config file `name` next to the file `here`, with argument `arg`
  (for configs built on another one)."""
  path = os.path.join(os.path.dirname(here), name)
  return load_file(f"{path}:{arg}" if arg else path)


def require_image_text(config: ml_collections.ConfigDict,
                       workdir: str) -> None:
  """UserError for a run of a multi-modality model (`model.modalities`),
  for the tools that embed or export images and captions."""
  if "modalities" in config.model:
    raise UserError(
        f"{workdir} holds a model of the modalities "
        f"{', '.join(config.model.modalities)}, not an image–text model; "
        f"score it with python -m cliplite_jax.evaluate --workdir={workdir}")


def load_baseline_base(here: str, arg: str | None
                       ) -> ml_collections.ConfigDict:
  """The config a baseline (another objective) starts from: the COCO model
  of `coco_rn50_bert.py` with `arg`, or, for the argument "data=shapes",
  the embedded demo of `default.py` (same steps, batch and schedules)."""
  if arg and "data=shapes" in arg.split(","):
    if arg != "data=shapes":
      raise UserError(f"config argument {arg!r}: data=shapes takes no "
                      f"other argument (override fields with --config.*)")
    return load_sibling(here, "default.py", None)
  return load_sibling(here, "coco_rn50_bert.py", arg)


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
