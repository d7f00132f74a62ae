"""What keeps long runs safe: preemption, non-finite values, config drift."""
from __future__ import annotations

import json
import os
import signal
import threading

import jax
import jax.numpy as jnp
import ml_collections
from etils import epath

from cliplite_jax import config_io, objectives
from cliplite_jax.objectives import clusters
from cliplite_jax.data import augment
from cliplite_jax.training import optim

# Sections of the config that a checkpoint's contents depend on: resuming
# with other values would load mismatched weights or train something else.
_CHECKPOINT_DEFINING = ("model", "loss", "data.name", "data.mixture",
                        "data.image_size",
                        "data.max_tokens", "data.tokenizer", "optim.ema_decay")
# Memory/speed choices under those prefixes, and where the initial weights
# were read (read once, at step 0): changing them changes no result.
_FREE_TO_CHANGE = ("model.remat", "loss.gather", "model.init_from",
                   "model.init_arch",
                   "model.image.init_from", "model.text.init_from")
# Fields configs saved before they existed lack: absent means this value.
_ABSENT_MEANS = {"model.head": "milinear",
                 "model.pixel_mean": list(augment.IMAGENET_MEAN),
                 "model.pixel_std": list(augment.IMAGENET_STD),
                 "model.image.posemb_grid": 0, "optim.ema_decay": 0.0,
                 "loss.critic": "dot", "loss.image_image": 0.0,
                 "loss.text_text": 0.0, "loss.negatives": "rolled",
                 "data.mixture": "",
                 **{f"loss.clusters.{k}": v
                    for k, v in clusters.DEFAULTS.items()}}
# Loss fields only some objectives read: {prefix: those objectives}. A run of
# another objective may resume with them changed (or added, as configs saved
# before they existed lack them).
_READ_BY = {"loss.nclip.": objectives.NCLIP_LOSSES,
            "loss.symile_sampling": ("symile",)}


class PreemptionSignal:
  """Context manager that turns SIGTERM and SIGINT into a flag the train
  loop polls.

  `requested(step)` is True once SIGTERM or a first SIGINT (Ctrl-C) arrived:
  the loop then saves a checkpoint and returns. A second SIGINT exits at
  once (status 130), without saving. In multi-process runs `requested` is
  JAX's preemption sync point, so all processes stop at the same step, and
  a first SIGINT is passed on to it as SIGTERM. Outside the main thread it
  installs nothing.
  """

  def __init__(self):
    self._received = False
    self._interrupts = 0
    self._previous = {}

  def __enter__(self) -> "PreemptionSignal":
    if threading.current_thread() is not threading.main_thread():
      return self
    # With several processes JAX's coordination service catches SIGTERM and
    # agrees on a step; a handler here would hide the signal from it.
    if jax.process_count() == 1:
      self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM,
                                                     self._handle)
    # An ignored SIGINT (a background job of a script) stays ignored.
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
      self._previous[signal.SIGINT] = signal.signal(signal.SIGINT,
                                                    self._interrupt)
    return self

  def __exit__(self, *exc) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    del signum, frame
    self._received = True

  def _interrupt(self, signum, frame) -> None:
    self._interrupts += 1
    if self._interrupts > 1:
      # The checkpoints already on disk are complete: Orbax renames a step's
      # folder only once it is written.
      os.write(2, b"interrupted again: exiting without saving; the same "
               b"command resumes from the last checkpoint\n")
      os._exit(128 + signal.SIGINT)
    # os.write: print could re-enter a write the main thread is in.
    os.write(1, b"interrupted: saving a checkpoint at this step, then "
             b"exiting (Ctrl-C again exits at once)\n")
    if jax.process_count() > 1:
      os.kill(os.getpid(), signal.SIGTERM)
    else:
      self._handle(signum, frame)

  def requested(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # no preemption service in this jax.distributed
        return False
    return self._received


class NonFiniteError(config_io.UserError):
  """The loss or gradient norm became NaN or infinite."""


class NonFiniteGuard:
  """Remembers, on device, the first step whose loss or grad norm is not finite.

  `update` costs two tiny device ops per step and never waits for the step;
  `check` (called before saving and at log lines) fetches the record and
  raises NonFiniteError naming the step and the metric.
  """

  WATCHED = ("loss/total", "grad_norm")

  def __init__(self):
    self._first_bad = jnp.full((len(self.WATCHED),), -1, jnp.int32)
    # A step restored without an integrity record (set by
    # checkpoint_saver.OverlappedSaver): not called "good" in the message.
    self.unverified_step = None

  def update(self, step: int, metrics: dict) -> None:
    finite = jnp.stack([jnp.isfinite(metrics[k]) for k in self.WATCHED])
    self._first_bad = jnp.where((self._first_bad < 0) & ~finite, step,
                                self._first_bad)

  def record(self) -> jax.Array:
    """The record so far: int32[2], per watched metric the first bad step
    or -1. Taking it does not wait for the steps."""
    return self._first_bad

  def check(self, last_good_checkpoint: int | None,
            record: jax.Array | None = None) -> None:
    """Raises NonFiniteError if `record` (default: the latest) names a step."""
    first_bad = jax.device_get(self._first_bad if record is None else record)
    bad = {k: int(s) for k, s in zip(self.WATCHED, first_bad) if s >= 0}
    if not bad:
      return
    step = min(bad.values())
    names = " and ".join(k for k, s in bad.items() if s == step)
    if last_good_checkpoint is None:
      kept = "no checkpoint was saved yet"
    elif last_good_checkpoint == self.unverified_step:
      kept = (f"the last checkpoint, step {last_good_checkpoint}, is kept; it "
              f"was restored without an integrity record, so unverified")
    else:
      kept = f"the last good checkpoint, step {last_good_checkpoint}, is kept"
    raise NonFiniteError(
        f"{names} is not finite at step {step}; stopped without saving "
        f"({kept}). Lower the learning rate or check the data.")


def _flatten(tree, prefix: str = "") -> dict:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: tree}


def check_config_change(config: ml_collections.ConfigDict, workdir: str,
                        allow: bool) -> None:
  """Refuses to resume WORKDIR with a config that changes what was trained.

  Compares the model, loss and tokenisation fields with WORKDIR/config.json
  (if any). Raises UserError listing each change unless `allow`.
  """
  path = epath.Path(workdir) / config_io.CONFIG_FILE
  if not path.exists():
    return
  saved_config = config_io.load_saved(workdir)
  saved_ema, new_ema = optim.ema_decay(saved_config), optim.ema_decay(config)
  if bool(saved_ema) != bool(new_ema):  # the state has one more tree, or one less
    held = (f"keep a weight EMA (optim.ema_decay={saved_ema})" if saved_ema
            else "keep no weight EMA")
    raise config_io.UserError(
        f"the checkpoints in {workdir} {held}; optim.ema_decay={new_ema} "
        f"would change what they hold: keep the saved value or use a new "
        f"--workdir")
  saved_negatives, new_negatives = (c.loss.get("negatives", "rolled")
                                    for c in (saved_config, config))
  if "clusters" in (saved_negatives, new_negatives) and (
      saved_negatives != new_negatives):  # the state holds centroids, or not
    raise config_io.UserError(
        f"the checkpoints in {workdir} were trained with "
        f"loss.negatives={saved_negatives!r}; {new_negatives!r} would change "
        f"what they hold: keep the saved value or use a new --workdir")
  if allow:
    return
  saved = _flatten(saved_config.to_dict())
  # A JSON round trip makes tuples lists, as in the saved file.
  new = _flatten(json.loads(config.to_json()))
  losses = {saved.get("loss.name"), new.get("loss.name")}
  inert = tuple(prefix for prefix, readers in _READ_BY.items()
                if not losses & set(readers))
  changes = []
  for key in sorted(set(saved) | set(new)):
    if (key.startswith(_CHECKPOINT_DEFINING) and key not in _FREE_TO_CHANGE
        and not key.startswith(inert)
        and saved.get(key, _ABSENT_MEANS.get(key))
        != new.get(key, _ABSENT_MEANS.get(key))):
      changes.append(f"{key} ({saved.get(key)!r} -> {new.get(key)!r})")
  if changes:
    raise config_io.UserError(
        f"the config differs from {path} in {', '.join(changes)}; resume with "
        f"the saved config, use a new --workdir, or pass --allow_config_change")
