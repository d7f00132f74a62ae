"""The progress line's units: throughput, ETA and the data wait."""
import time
import types

import pytest

from cliplite_jax.training import metrics


def test_data_wait_is_the_share_of_wall_time_spent_waiting(monkeypatch):
  now = [100.0]  # a clock the test moves, so a busy machine changes nothing
  monkeypatch.setattr(metrics, "time", types.SimpleNamespace(
      perf_counter=lambda: now[0], time=time.time))
  progress = metrics.Progress(first_step=0, total_steps=10, batch_size=8)
  now[0] += 0.25
  progress.waited(0.1)
  timing = progress.update(2)
  assert timing["data_wait_frac"] == pytest.approx(0.1 / 0.25)
  assert timing["img_per_s"] == pytest.approx(2 * 8 / 0.25)
  assert timing["eta_s"] == pytest.approx(8 / (2 / 0.25))
  assert timing["elapsed_s"] == pytest.approx(0.25)
  # The wait restarts from zero with each update.
  now[0] += 0.05
  assert progress.update(3)["data_wait_frac"] == 0.0
  # Waiting longer than the interval (time counted before it) caps at 1.
  now[0] += 0.1
  progress.waited(0.3)
  assert progress.update(4)["data_wait_frac"] == 1.0


def test_progress_line_names_the_data_wait_only_when_it_matters():
  logged = {"loss/total": 1.25, "img_per_s": 230.0}
  quiet = metrics.progress_line(150, 1000, logged | {"data/wait_frac": 0.01},
                                220)
  assert quiet == "step 150/1000 | loss 1.2500 | 230 img/s | ETA 3m40s"
  starved = metrics.progress_line(150, 1000,
                                  logged | {"data/wait_frac": 0.234}, 220)
  assert starved == ("step 150/1000 | loss 1.2500 | 230 img/s | data wait "
                     "23% | ETA 3m40s")
