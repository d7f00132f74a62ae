"""The one progress line (embed, rewrite, evaluation's extraction) on a fake
clock."""
import time

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


def test_units_done_earlier_count_towards_the_total_not_the_rate(clock, capsys):
  tally = [0]
  meter = progress.Progress("prepare", 10, unit="units", every_s=1,
                            redraw=False, done=4, tally=lambda: tally[0],
                            tally_unit="examples")
  assert meter.line(clock[0]).startswith("prepare: 4/10 units (0.0/s, ETA …)")
  clock[0] += 2
  tally[0] = 300
  meter.add(1)  # 1 unit in 2 s this run: 0.5/s, 5 left → 10 s
  assert capsys.readouterr().err.splitlines() == [
      "prepare: 5/10 units (0.5/s, ETA 0:10), 300 examples (150/s)"]


def test_a_thread_draws_between_adds_and_a_last_line_when_stopped_early(
    capsys):
  seen = []
  with progress.Progress("prepare", 3, unit="units", every_s=0.05,
                         redraw=False,
                         tally=lambda: seen.append(1) or len(seen),
                         tally_unit="examples") as meter:
    deadline = time.time() + 10
    while len(seen) < 3 and time.time() < deadline:
      time.sleep(0.01)  # no add(): only the thread draws
    meter.add(1)
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) >= 3 and all(l.startswith("prepare: ") for l in lines)
  assert lines[-1].startswith("prepare: 1/3 units")  # where it stopped


def test_a_finished_run_prints_its_last_line_once(capsys):
  with progress.Progress("prepare", 2, every_s=0.01, redraw=False) as meter:
    meter.add(2)
    time.sleep(0.1)  # ticks after the end draw nothing
  assert len(capsys.readouterr().err.splitlines()) == 1
