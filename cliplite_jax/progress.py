"""The progress line of long work: embedding, rewriting, and evaluation's
feature extraction."""
from __future__ import annotations

import sys
import time


class Progress:
  """"what: done/total unit (rate/s, ETA m:ss)" on stderr: redrawn in
  place on a terminal (`redraw`, default: when stderr is one), else a line
  every `every_s` seconds, and a last line when done reaches total
  (`last_line`). `show` False prints nothing (a process other than 0)."""

  def __init__(self, what: str, total: int, unit: str = "",
               every_s: float = 15.0, show: bool = True,
               last_line: bool = True, redraw: bool | None = None):
    self._what, self._total, self._unit = what, total, unit
    self._show, self._last_line = show, last_line
    self.done = 0
    self._start = self._last = time.time()
    self._redraw = sys.stderr.isatty() if redraw is None else redraw
    self._every = 0.5 if self._redraw else every_s

  def add(self, count: int) -> None:
    """Counts `count` more done; prints when a line is due."""
    self.done += count
    now = time.time()
    finished = self.done >= self._total
    due = now - self._last >= self._every or (finished and self._last_line)
    if self._show and due:
      self._last = now
      rate = self.done / max(now - self._start, 1e-9)
      eta = max(self._total - self.done, 0) / max(rate, 1e-9)
      unit = f" {self._unit}" if self._unit else ""
      line = (f"{self._what}: {self.done}/{self._total}{unit} ({rate:.1f}/s, "
              f"ETA {int(eta) // 60}:{int(eta) % 60:02d})")
      end = "\n" if not self._redraw or finished else ""
      print(("\r" if self._redraw else "") + line, end=end, file=sys.stderr,
            flush=True)
