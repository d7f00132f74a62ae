"""experiments/experiments.py's bookkeeping, with training replaced by a
function of the run's settings: learning rates are chosen on validation only, shared
per objective and batch across fractions and schedule lengths, and a study
stopped part-way continues without retraining what is recorded."""
import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiments"))

import experiments  # noqa: E402


BESTS = {"jsd": 2.0, "infonce": 0.5, "sigmoid": 1.0}


def _metrics(objective, lr_scale, seed, split, fraction=1.0, bests=BESTS):
  """Validation prefers lr ×2 for JSD, ×0.5 for InfoNCE (the grid's edges)
  and ×1 for SigLIP unless `bests` says otherwise; test would prefer others,
  so a choice made on test would show."""
  best = bests[objective]
  good = 1.0 - abs(lr_scale - best) / 4
  if split == "test":
    good = 1.0 - good
  value = good * fraction + 0.01 * seed
  return {key: value for key in experiments.METRICS.values()}


class FakeTraining:
  """Stands in for runs.train and experiments._evaluate_on; records calls."""

  def __init__(self, fail_after=None, bests=BESTS):
    self.trained, self.evaluated = [], []
    self.fail_after = fail_after
    self.bests = bests

  def train(self, workdir, config, steps, seed, overrides):
    if self.fail_after is not None and len(self.trained) == self.fail_after:
      raise KeyboardInterrupt  # a study stopped part-way
    settings = dict(o[len("--config."):].split("=", 1) for o in overrides
                    if o.startswith("--config."))
    objective = settings.get("loss.name", "jsd")
    lr_scale = float(settings["optim.lr.image"]) / 0.2
    split = settings["eval.split"]
    metrics = _metrics(objective, lr_scale, seed, split,
                       float(settings["data.fraction"]), self.bests)
    os.makedirs(os.path.join(workdir, "eval"))
    with open(os.path.join(workdir, "eval", f"step_{steps}.json"), "w") as f:
      json.dump({"objective": objective, "lr_scale": lr_scale,
                 "fraction": float(settings["data.fraction"])}, f)
    self.trained.append((os.path.basename(workdir), split))
    return metrics

  def evaluate(self, workdir, step, split):
    with open(os.path.join(workdir, "eval", f"step_{step}.json")) as f:
      run = json.load(f)
    seed = int(workdir.rsplit("_seed", 1)[1])
    self.evaluated.append((os.path.basename(workdir), split))
    return _metrics(run["objective"], run["lr_scale"], seed, split,
                    run["fraction"], self.bests)


@pytest.fixture
def fake(monkeypatch):
  def install(**kwargs):
    training = FakeTraining(**kwargs)
    monkeypatch.setattr(experiments.runs, "train", training.train)
    monkeypatch.setattr(experiments, "_evaluate_on", training.evaluate)
    return training
  return install


def test_learning_rate_chosen_on_validation_and_seeds_scored_on_test(
    fake, tmp_path):
  training = fake()
  summary = experiments.run_study("batch", [0, 1, 2], str(tmp_path),
                                  steps_scale=0.01, only="jsd_b64,infonce_b64")
  assert summary["jsd_b64_s5"]["lr_scale"] == 2.0
  assert summary["infonce_b64_s5"]["lr_scale"] == 0.5
  # Seed 0 at the chosen rate is re-evaluated on test, not retrained.
  assert ("jsd_b64_s5_lr2_seed0", "test") in training.evaluated
  # Bests at the grid's edges: one more rate beyond each, on validation,
  # which puts them inside the grid.
  assert set(summary["jsd_b64_s5"]["validation"]) == {"0.5", "1", "2", "4"}
  assert set(summary["infonce_b64_s5"]["validation"]) == {
      "0.25", "0.5", "1", "2"}
  assert len(training.trained) == 2 * (4 + 2)
  mean, std = summary["jsd_b64_s5"]["test"]["linear"]
  expected = [_metrics("jsd", 2.0, s, "test")["linear/shapes_captions/top1"]
              for s in (0, 1, 2)]
  assert mean == pytest.approx(sum(expected) / 3)
  assert std == pytest.approx(0.01)  # the sample std (ddof 1) of 3 seeds


def test_grid_widened_only_where_the_best_is_at_its_edge(fake, tmp_path):
  training = fake()
  summary = experiments.run_study("batch", [0, 1], str(tmp_path),
                                  steps_scale=0.01, only="sigmoid_b64")
  assert summary["sigmoid_b64_s5"]["lr_scale"] == 1.0
  assert set(summary["sigmoid_b64_s5"]["validation"]) == {"0.5", "1", "2"}
  assert len(training.trained) == 3 + 1


def test_grid_widened_until_the_best_is_inside_it_or_at_the_limit(
    fake, tmp_path):
  # InfoNCE's best ×0.1 lies three halvings below the grid: ×0.125 wins,
  # then ×0.0625 loses, so ×0.125 is inside. SigLIP's best ×100 is beyond
  # the limit: the grid stops at ×2 · 2**MAX_WIDENINGS and keeps it.
  training = fake(bests={"jsd": 1.0, "infonce": 0.1, "sigmoid": 100.0})
  summary = experiments.run_study("batch", [0], str(tmp_path),
                                  steps_scale=0.01,
                                  only="infonce_b64,sigmoid_b64")
  assert summary["infonce_b64_s5"]["lr_scale"] == 0.125
  assert set(summary["infonce_b64_s5"]["validation"]) == {
      "0.0625", "0.125", "0.25", "0.5", "1", "2"}
  limit = 2.0 * 2 ** experiments.MAX_WIDENINGS
  assert summary["sigmoid_b64_s5"]["lr_scale"] == limit
  assert set(summary["sigmoid_b64_s5"]["validation"]) == {
      f"{0.5 * 2 ** k:g}" for k in range(3 + experiments.MAX_WIDENINGS)}
  assert len(training.trained) == (3 + 3) + (3 + experiments.MAX_WIDENINGS)


def test_fraction_study_reuses_the_batch_study_runs_and_tuning(fake, tmp_path):
  fake()
  experiments.run_study("batch", [0, 1], str(tmp_path), steps_scale=0.01,
                        only="jsd_b64")
  training = fake()
  summary = experiments.run_study("fraction", [0, 1], str(tmp_path),
                                  steps_scale=0.01, only="jsd")
  # Only the smaller fractions' seeds train; 100 % and the rates are shared.
  assert sorted(training.trained) == sorted(
      (f"jsd_b64_f{f:g}_s5_lr2_seed{s}", "test")
      for f in (0.1, 0.25, 0.5) for s in (0, 1))
  assert summary["jsd_b64_f0.1_s5"]["tuned_on"] == "jsd_b64_s5"
  assert summary["jsd_b64_f0.1_s5"]["lr_scale"] == 2.0


def test_a_stopped_study_continues_where_it_stopped(fake, tmp_path):
  stopped = fake(fail_after=4)
  with pytest.raises(KeyboardInterrupt):
    experiments.run_study("batch", [0, 1, 2], str(tmp_path),
                          steps_scale=0.01, only="jsd_b64")
  first = list(stopped.trained)
  resumed = fake()
  summary = experiments.run_study("batch", [0, 1, 2], str(tmp_path),
                                  steps_scale=0.01, only="jsd_b64")
  assert not set(first) & set(resumed.trained)
  assert len(first) + len(resumed.trained) == 4 + 2
  again = fake()
  assert experiments.run_study("batch", [0, 1, 2], str(tmp_path),
                               steps_scale=0.01, only="jsd_b64") == summary
  assert again.trained == [] and again.evaluated == []
  with open(tmp_path / "results.jsonl") as f:
    assert len(f.readlines()) == 4 + 3  # 4 validation, 3 test records


def test_a_selection_or_root_with_nothing_in_it_is_an_error(fake, tmp_path):
  training = fake()
  with pytest.raises(ValueError, match="--only=jsd_b8"):
    experiments.run_study("batch", [0], str(tmp_path / "runs"),
                          steps_scale=0.01, only="jsd_b8")
  assert not training.trained and not os.path.exists(tmp_path / "runs")
  with pytest.raises(ValueError, match="no finished run"):
    experiments.collect(str(tmp_path))


@pytest.mark.parametrize("argv,needle", [
    (["--seeds=0,0"], "repeats seed 0"),
    (["--seeds=1,2,1,2"], "repeats seed 1, 2"),
    (["--steps_scale=inf"], "'inf' is not a number above 0"),
    (["--steps_scale=nan"], "'nan' is not a number above 0"),
    (["--steps_scale=1e308"], "at most 1e+06"),
])
def test_repeated_seeds_and_infinite_scales_are_one_usage_error(
    fake, tmp_path, monkeypatch, capsys, argv, needle):
  training = fake()
  monkeypatch.setattr(sys, "argv", ["experiments.py", "batch",
                                    f"--root={tmp_path / 'runs'}",
                                    "--only=jsd_b64", *argv])
  with pytest.raises(SystemExit) as exit_:
    experiments.main()
  assert exit_.value.code == 2
  error = capsys.readouterr().err.strip().splitlines()[-1]
  assert error.startswith("usage: ") or "error: argument" in error
  assert needle in error, error
  assert not training.trained and not os.path.exists(tmp_path / "runs")


def test_a_torn_last_result_line_is_skipped_and_named(fake, tmp_path,
                                                      capsys):
  fake(fail_after=2)
  with pytest.raises(KeyboardInterrupt):
    experiments.run_study("batch", [0], str(tmp_path), steps_scale=0.01,
                          only="jsd_b64")
  ledger = tmp_path / "results.jsonl"
  records = ledger.read_text().splitlines()
  assert len(records) == 2
  # Killed while appending the third record: half a line, no line end.
  third = json.dumps(dict(json.loads(records[1]), run="x"))
  with open(ledger, "a") as f:
    f.write(third[:40])
  capsys.readouterr()
  resumed = fake()
  summary = experiments.run_study("batch", [0], str(tmp_path),
                                  steps_scale=0.01, only="jsd_b64")
  err = capsys.readouterr().err
  assert err.count(str(ledger)) == 1 and "skipped 1 torn last line" in err
  assert len(resumed.trained) == 2  # what the 2 records hold is not redone
  lines = ledger.read_text().splitlines()
  assert lines[:2] == records
  assert all(json.loads(line)["run"] for line in lines)  # all whole again
  assert summary["jsd_b64_s5"]["lr_scale"] == 2.0


def test_a_corrupt_result_line_before_the_last_names_file_and_line(
    fake, tmp_path, monkeypatch, capsys):
  fake(fail_after=3)
  with pytest.raises(KeyboardInterrupt):
    experiments.run_study("batch", [0], str(tmp_path), steps_scale=0.01,
                          only="jsd_b64")
  ledger = tmp_path / "results.jsonl"
  lines = ledger.read_text().splitlines()
  before = "\n".join([lines[0], lines[1][:30], lines[2]]) + "\n"
  ledger.write_text(before)
  training = fake()
  with pytest.raises(ValueError, match=rf"{ledger}, line 2: not a results"):
    experiments.run_study("batch", [0], str(tmp_path), steps_scale=0.01,
                          only="jsd_b64")
  # From the command line: one usage error naming them, nothing changed.
  monkeypatch.setattr(sys, "argv", ["experiments.py", "batch",
                                    f"--root={tmp_path}", "--only=jsd_b64",
                                    "--steps_scale=0.01", "--seeds=0"])
  with pytest.raises(SystemExit) as exit_:
    experiments.main()
  assert exit_.value.code == 2
  assert f"{ledger}, line 2" in capsys.readouterr().err.splitlines()[-1]
  assert not training.trained and ledger.read_text() == before
