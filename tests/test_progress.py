"""The one progress line (embed, rewrite, evaluation's extraction) on a fake
clock."""
import pytest

from cliplite_jax import progress


@pytest.fixture
def clock(monkeypatch):
  now = [100.0]
  monkeypatch.setattr(progress.time, "time", lambda: now[0])
  return now


def test_lines_every_interval_and_a_last_one(clock, capsys):
  meter = progress.Progress("images", 10, unit="files", every_s=15,
                            redraw=False)
  clock[0] += 5
  meter.add(2)  # not due yet
  clock[0] += 15
  meter.add(3)  # 5 done in 20 s: 0.25/s, 5 left → 20 s
  clock[0] += 1
  meter.add(5)  # done: a last line although not due
  lines = capsys.readouterr().err.splitlines()
  assert lines == ["images: 5/10 files (0.2/s, ETA 0:20)",
                   "images: 10/10 files (0.5/s, ETA 0:00)"]


def test_evaluation_style_no_last_line_and_silent_elsewhere(clock, capsys):
  meter = progress.Progress("coco test", 4, unit="images", every_s=30,
                            last_line=False, redraw=False)
  clock[0] += 1
  meter.add(4)
  assert capsys.readouterr().err == ""
  quiet = progress.Progress("x", 4, every_s=0, show=False, redraw=False)
  clock[0] += 60
  quiet.add(4)
  assert capsys.readouterr().err == ""


def test_redrawn_in_place_on_a_terminal(clock, capsys):
  meter = progress.Progress("rewrites", 2, redraw=True)
  clock[0] += 1
  meter.add(1)
  clock[0] += 1
  meter.add(1)
  assert capsys.readouterr().err == (
      "\rrewrites: 1/2 (1.0/s, ETA 0:01)\rrewrites: 2/2 (1.0/s, ETA 0:00)\n")
