"""A progress line for long command-line work (embedding, rewriting)."""
from __future__ import annotations

import sys
import time


class Progress:
  """"what: done/total unit (rate/s, ETA m:ss)" on stderr: redrawn in
  place on a terminal, a line every `every_s` seconds otherwise, and a last
  line when done reaches total."""

  def __init__(self, what: str, total: int, unit: str = "",
               every_s: float = 15.0):
    self._what, self._total, self._unit = what, total, unit
    self.done = 0
    self._start = self._last = time.time()
    self._tty = sys.stderr.isatty()
    self._every = 0.5 if self._tty else every_s

  def add(self, count: int) -> None:
    self.done += count
    now = time.time()
    if now - self._last >= self._every or self.done >= self._total:
      self._last = now
      rate = self.done / max(now - self._start, 1e-9)
      eta = max(self._total - self.done, 0) / max(rate, 1e-9)
      unit = f" {self._unit}" if self._unit else ""
      line = (f"{self._what}: {self.done}/{self._total}{unit} ({rate:.1f}/s, "
              f"ETA {int(eta) // 60}:{int(eta) % 60:02d})")
      end = "\n" if not self._tty or self.done >= self._total else ""
      print(("\r" if self._tty else "") + line, end=end, file=sys.stderr,
            flush=True)
