"""What experiments/experiments.py reads: its arguments (--seeds, --steps_scale)
and ROOT/results.jsonl, the ledger of every scored run."""
from __future__ import annotations

import argparse
import json
import os
import sys


class Ledger:
  """ROOT/results.jsonl: one record per (run, split), appended as runs
  finish; what is in it is never recomputed.

  A torn last line (a process killed while appending: no line end, not
  JSON) is skipped with one line on stderr and cut from the file, so the
  next record starts on a line of its own; its run is scored again. Any
  other line that is not a record is a ValueError naming the file and line.
  """

  def __init__(self, path: str):
    self.path = path
    self.records = []
    if os.path.exists(path):
      self.records = self._read()

  def _read(self) -> list[dict]:
    with open(self.path, "rb") as f:
      data = f.read()
    lines = data.split(b"\n")
    records, good_end = [], 0
    for number, line in enumerate(lines, 1):
      last = number == len(lines)  # after the final line end: unterminated
      if line.strip():
        try:
          record = json.loads(line)
          if not (isinstance(record, dict) and "run" in record
                  and "split" in record):
            raise ValueError("not a record with a run and a split")
        except ValueError as e:
          if last:
            print(f"experiments: {self.path}: skipped 1 torn last line (a "
                  f"run killed while writing it; that run is scored again)",
                  file=sys.stderr, flush=True)
            with open(self.path, "r+b") as f:
              f.truncate(good_end)
            return records
          raise ValueError(
              f"{self.path}, line {number}: not a results record ({e}); "
              f"repair or delete that line (its run is then scored "
              f"again)") from None
        records.append(record)
      good_end += len(line) + 1
    if data and not data.endswith(b"\n"):  # a whole record, no line end
      with open(self.path, "ab") as f:
        f.write(b"\n")
    return records

  def find(self, run: str, split: str) -> dict | None:
    """The record of `run` scored on `split`, or None."""
    return next((r for r in self.records
                 if r["run"] == run and r["split"] == split), None)

  def add(self, record: dict) -> dict:
    """Appends `record` (a line of its own) and returns it."""
    self.records.append(record)
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    return record


def seed_list(text: str) -> list[int]:
  """--seeds: comma-separated integers, each once."""
  try:
    seeds = [int(s) for s in text.split(",")]
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"{text!r} is not comma-separated integers") from None
  repeated = sorted({s for s in seeds if seeds.count(s) > 1})
  if repeated:
    raise argparse.ArgumentTypeError(
        f"{text!r} repeats seed {', '.join(map(str, repeated))}: each seed is "
        f"one run, and a repeat would be scored twice as if it were another")
  return seeds


# --steps_scale at most: 500 M steps a run, already far beyond any study.
MAX_STEPS_SCALE = 1e6


def positive_scale(text: str) -> float:
  """--steps_scale: a number in (0, MAX_STEPS_SCALE] (not nan or inf)."""
  try:
    value = float(text)
  except ValueError:
    value = None
  if value is None or not 0 < value <= MAX_STEPS_SCALE:  # also nan, inf
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a number above 0 and at most {MAX_STEPS_SCALE:g}")
  return value
