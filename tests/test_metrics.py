"""The progress line's units: throughput, ETA and the data wait."""
import time

from cliplite_jax import metrics


def test_data_wait_is_the_share_of_wall_time_spent_waiting():
  progress = metrics.Progress(first_step=0, total_steps=10, batch_size=8)
  time.sleep(0.2)
  progress.waited(0.1)
  timing = progress.update(2)
  # 0.1 s of waiting over a little more than 0.2 s of wall time.
  assert 0.3 < timing["data_wait_frac"] <= 0.5
  assert timing["img_per_s"] <= 2 * 8 / 0.2
  # The wait restarts from zero with each update.
  time.sleep(0.05)
  assert progress.update(3)["data_wait_frac"] == 0.0


def test_progress_line_names_the_data_wait_only_when_it_matters():
  logged = {"loss/total": 1.25, "img_per_s": 230.0}
  quiet = metrics.progress_line(150, 1000, logged | {"data/wait_frac": 0.01},
                                220)
  assert quiet == "step 150/1000 | loss 1.2500 | 230 img/s | ETA 3m40s"
  starved = metrics.progress_line(150, 1000,
                                  logged | {"data/wait_frac": 0.234}, 220)
  assert starved == ("step 150/1000 | loss 1.2500 | 230 img/s | data wait "
                     "23% | ETA 3m40s")
