"""The progress line of long work: preparing, embedding, rewriting, and
evaluation's feature extraction."""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable


class Progress:
  """"what: done/total unit (rate/s, ETA m:ss)" on stderr: redrawn in
  place on a terminal (`redraw`, default: when stderr is one), else a line
  every `every_s` seconds, and a last line when done reaches total
  (`last_line`). `show` False prints nothing (a process other than 0).

  `done` units finished before this process started count towards the total
  but not the rate. `tally` is a second count read whenever a line is drawn
  (prepare: the examples its worker processes have written), shown with its
  own rate as ", N tally_unit (r/s)". Used as a context manager, a thread
  also draws the line every `every_s` seconds between `add`s (units that
  take minutes each) and a last line on exit.
  """

  def __init__(self, what: str, total: int, unit: str = "",
               every_s: float = 15.0, show: bool = True,
               last_line: bool = True, redraw: bool | None = None,
               done: int = 0, tally: Callable[[], int] | None = None,
               tally_unit: str = ""):
    self._what, self._total, self._unit = what, total, unit
    self._show, self._last_line = show, last_line
    self._tally, self._tally_unit = tally, tally_unit
    self.done = self._done_before = done
    self._start = self._last = time.time()
    self._redraw = sys.stderr.isatty() if redraw is None else redraw
    self._every = 0.5 if self._redraw else every_s
    self._lock = threading.Lock()
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def add(self, count: int) -> None:
    """Counts `count` more done; prints when a line is due."""
    with self._lock:
      self.done += count
      now = time.time()
      finished = self.done >= self._total
      if now - self._last >= self._every or (finished and self._last_line):
        self._print(now, finished)

  def line(self, now: float) -> str:
    """The progress line at time `now` (no newline)."""
    elapsed = max(now - self._start, 1e-9)
    rate = (self.done - self._done_before) / elapsed
    left = max(self._total - self.done, 0)
    if rate > 0 or not left:
      eta = int(left / max(rate, 1e-9))
      eta_text = f"ETA {eta // 60}:{eta % 60:02d}"
    else:
      eta_text = "ETA …"
    unit = f" {self._unit}" if self._unit else ""
    text = (f"{self._what}: {self.done}/{self._total}{unit} ({rate:.1f}/s, "
            f"{eta_text})")
    if self._tally is not None:
      tally = self._tally()
      text += f", {tally} {self._tally_unit} ({tally / elapsed:.0f}/s)"
    return text

  def _print(self, now: float, finished: bool) -> None:
    self._last = now
    if not self._show:
      return
    end = "\n" if not self._redraw or finished else ""
    print(("\r" if self._redraw else "") + self.line(now), end=end,
          file=sys.stderr, flush=True)

  def __enter__(self) -> "Progress":
    self._thread = threading.Thread(target=self._tick, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    self._thread.join()
    with self._lock:
      if self._last_line and self.done < self._total:
        self._print(time.time(), True)  # stopped early: where it stopped

  def _tick(self) -> None:
    while not self._stop.wait(self._every):
      with self._lock:
        if self.done < self._total:  # else the last line is out already
          self._print(time.time(), False)
