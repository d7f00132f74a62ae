"""Metric writers (JSONL + TensorBoard) and the progress line."""
from __future__ import annotations

import json
import os
import socket
import time

import jax
from etils import epath
from tensorboard.compat.proto import (event_pb2, summary_pb2, tensor_pb2,
                                     tensor_shape_pb2, types_pb2)
from tensorboard.summary.writer import record_writer


class MetricWriter:
  """Appends `{"step": N, **metrics}` to WORKDIR/metrics.jsonl and TensorBoard.

  Only process 0 writes; other processes get a writer that does nothing. A
  resumed run passes `resume_step`: records after it (logged by the killed
  run past its last checkpoint) are dropped, so metrics.jsonl reads as one
  uninterrupted run.
  """

  def __init__(self, workdir: str, resume_step: int | None = None):
    self._active = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if self._active:
      path = epath.Path(workdir) / "metrics.jsonl"
      if resume_step is not None and path.exists():
        _truncate_after(path, resume_step)
      self._jsonl = path.open("a")
      self._tb = _ScalarWriter(str(epath.Path(workdir) / "tb"))

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self._active:
      return
    record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    del record["step"]
    self._tb.write(int(step), record)

  def write_text(self, step: int, tag: str, text: str) -> None:
    """A text entry in TensorBoard (its Text tab), e.g. the run summary."""
    if self._active:
      self._tb.write_text(int(step), tag, text)

  def close(self) -> None:
    if self._active:
      self._jsonl.close()
      self._tb.close()


def last_record(workdir: str, step: int) -> dict[str, float]:
  """The last metrics.jsonl record at or before `step` ({} if none): where
  a resumed run's running totals (core_hours) continue from."""
  path = epath.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return {}
  last = {}
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except ValueError:  # a line cut short by a kill
      continue
    if record.get("step", step + 1) <= step:
      last = record
  return last


class _ScalarWriter:
  """TensorBoard scalars, one event per step.

  Local directories get the event records written here in TensorBoard's
  record format, without importing TensorFlow (that import is ~8 s of every
  run's start). Remote ones (gs://) go through flax's writer, whose
  tf.io.gfile reaches cloud storage.
  """

  def __init__(self, logdir: str):
    self._flax = None
    if "://" in logdir:
      from flax.metrics import tensorboard
      self._flax = tensorboard.SummaryWriter(logdir)
      return
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}"
    self._records = record_writer.RecordWriter(
        open(os.path.join(logdir, name), "wb"))
    self._add(event_pb2.Event(file_version="brain.Event:2"))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if self._flax:
      for key, value in scalars.items():
        self._flax.scalar(key, value, step)
      self._flax.flush()
      return
    self._add(event_pb2.Event(step=step, summary=summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=key, simple_value=value)
        for key, value in scalars.items()])))

  def write_text(self, step: int, tag: str, text: str) -> None:
    if self._flax:
      self._flax.text(tag, text, step)
      self._flax.flush()
      return
    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text"))
    tensor = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, string_val=[text.encode()],
        tensor_shape=tensor_shape_pb2.TensorShapeProto())
    self._add(event_pb2.Event(step=step, summary=summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=tag, metadata=metadata,
                                  tensor=tensor)])))

  def _add(self, event: event_pb2.Event) -> None:
    event.wall_time = time.time()
    self._records.write(event.SerializeToString())
    self._records.flush()

  def close(self) -> None:
    (self._flax or self._records).close()


def _truncate_after(path: epath.Path, step: int) -> None:
  """Rewrites the JSONL file at `path` without records of steps > `step`."""
  lines = path.read_text().splitlines(keepends=True)
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= step:
        kept.append(line)
    except (ValueError, KeyError):  # a line cut short by a kill
      continue
  if len(kept) != len(lines):
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(kept))
    temporary.replace(path)


# The progress line names the data wait once it is at least this share of
# the wall time: the accelerator is starved.
SHOW_DATA_WAIT = 0.05


class Progress:
  """Throughput, ETA and data wait from wall-clock time between calls."""

  def __init__(self, first_step: int, total_steps: int, batch_size: int):
    self._total = total_steps
    self._batch = batch_size
    self._last_step, self._last_time = first_step, time.perf_counter()
    self._waited = 0.0

  def waited(self, seconds: float) -> None:
    """Adds time the loop spent waiting for its next batch."""
    self._waited += seconds

  def update(self, step: int) -> dict[str, float]:
    """Returns {"img_per_s", "eta_s", "data_wait_frac", "elapsed_s"} since
    the last call; data_wait_frac is the share of the wall time spent in
    `waited`."""
    now = time.perf_counter()
    elapsed = max(now - self._last_time, 1e-9)
    rate = (step - self._last_step) / elapsed
    wait = min(1.0, self._waited / elapsed)
    self._last_step, self._last_time, self._waited = step, now, 0.0
    return {"img_per_s": rate * self._batch,
            "eta_s": (self._total - step) / max(rate, 1e-9),
            "data_wait_frac": wait, "elapsed_s": elapsed}


def progress_line(step: int, total: int, metrics: dict[str, float],
                  eta_s: float) -> str:
  """"step 150/1500 | loss 0.812 | 410 img/s | ETA 3m12s", with
  "| data wait 23%" before the ETA when `data/wait_frac` is at least
  SHOW_DATA_WAIT."""
  minutes, seconds = divmod(int(eta_s), 60)
  wait = metrics.get("data/wait_frac", 0.0)
  starved = (f" | data wait {100 * wait:.0f}%" if wait >= SHOW_DATA_WAIT
             else "")
  return (f"step {step}/{total} | loss {metrics['loss/total']:.4f} | "
          f"{metrics['img_per_s']:.0f} img/s{starved} | "
          f"ETA {minutes}m{seconds:02d}s")
