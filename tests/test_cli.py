"""The command lines as a user runs them: end to end, and bad input."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from cliplite_jax.probes import plots
from conftest import run_module, tiny_overrides


def _rgb(hex_colour: str) -> np.ndarray:
  return np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])


def test_train_then_evaluate(tiny_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  train = run_module("cliplite_jax.main", "--config=configs/default.py",
                     f"--workdir={workdir}", *tiny_overrides(tiny_data_dir),
                     "--config.total_steps=60", "--config.log_every_steps=20",
                     "--config.checkpoint_every_steps=30")
  assert train.returncode == 0, train.stderr[-3000:]
  assert "step 60/60 | loss" in train.stdout
  assert "zeroshot/shapes_captions/top1" in train.stdout
  # It opens with the run summary, and no library's start-up chatter.
  summary = train.stdout.splitlines()[:7]
  assert summary[0].startswith("objective jsd + priors"), train.stdout[:800]
  assert "batch: 16 global, 8 per device, 8 per micro-batch" in summary
  assert any(line.startswith("data: shapes_captions/tiny train, 256 "
                             "examples (fraction 1); 60 steps = 3.8 epochs")
             for line in summary), summary
  for noise in ("oneDNN", "absl::InitializeLog", "cpu_feature_guard"):
    assert noise not in train.stderr, train.stderr[:2000]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  logged = [r for r in records if "loss/total" in r]
  assert [r["step"] for r in logged] == [20, 40, 60]
  # It learnt: after 60 steps the colour of the largest shape is read from
  # the image well above chance (4 classes; the most common is 35 of 128
  # test images, so no constant answer beats 0.27; this run gets ~0.45).
  with open(os.path.join(workdir, "eval", "step_60.json")) as f:
    final = json.load(f)
  assert final["zeroshot/shapes_captions_color/top1"] >= 0.38, final
  for key in ("loss/jsd", "loss/prior_img", "loss/prior_txt", "temperature",
              "lr/image", "lr/text", "lr/other", "grad_norm", "img_per_s",
              "data/wait_frac", "l2_params", "l2_updates"):
    assert key in logged[0], key
  assert all(0 <= r["data/wait_frac"] <= 1 for r in logged)
  # The units runs are compared in: 16 rows a step, 256 training images.
  for r in logged:
    assert r["examples_seen"] == 16 * r["step"]
    assert r["epoch"] == pytest.approx(16 * r["step"] / 256)
    assert r["img_per_s_per_device"] == pytest.approx(r["img_per_s"] / 2)
    assert r["l2_params"] > 0 and 0 < r["l2_updates"] < r["l2_params"]
  hours = [r["core_hours"] for r in logged]
  assert 0 < hours[0] < hours[1] < hours[2] < 2 * 600 / 3600
  # TensorBoard reads the same scalars back.
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(os.path.join(workdir, "tb"))
  events.Reload()
  assert {"loss/total", "data/wait_frac"} <= set(events.Tags()["scalars"])
  tb_losses = [(e.step, e.value) for e in events.Scalars("loss/total")]
  assert tb_losses == [(r["step"], np.float32(r["loss/total"]))
                       for r in logged]

  evaluate = run_module("cliplite_jax.evaluate", f"--workdir={workdir}",
                        "--step=30", "--gallery")
  assert evaluate.returncode == 0, evaluate.stderr[-3000:]
  for name in ("gallery_step_30.png", "curves.png"):
    with Image.open(os.path.join(workdir, "eval", name)) as picture:
      pixels = np.asarray(picture.convert("RGB")).astype(int)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 800, name
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, name
    if name.startswith("gallery"):
      # 6 queries × 5 retrieved images, each framed green or red.
      frames = sum(np.all(np.abs(pixels - _rgb(colour)) < 8, axis=-1).sum()
                   for colour in (plots.CORRECT, plots.WRONG))
      assert frames > 30 * 4 * 100
  with open(os.path.join(workdir, "eval", "step_30.json")) as f:
    results = json.load(f)
  for k in (1, 5, 10):
    assert 0.0 <= results[f"retrieval/shapes_captions/i2t_r{k}"] <= 1.0
    assert 0.0 <= results[f"retrieval/shapes_captions/t2i_r{k}"] <= 1.0
  assert 0.0 <= results["zeroshot/shapes_captions/top1"] <= 1.0
  assert 0.0 <= results["linear/shapes_captions/top1"] <= 1.0
  assert 0.0 <= results["svm/shapes_captions/map"] <= 1.0
  assert 0.0 <= results["gap/shapes_captions/modality_gap"] <= 2.0
  assert all(isinstance(v, float) for v in results.values())

  # Evaluation fields can be overridden like training's; model ones cannot.
  evaluate = run_module("cliplite_jax.evaluate", f"--workdir={workdir}",
                        "--config.eval.probes=('gap',)",
                        "--config.eval.batch_size=32")
  assert evaluate.returncode == 0, evaluate.stderr[-3000:]
  with open(os.path.join(workdir, "eval", "step_60.json")) as f:
    merged = json.load(f)  # the new gap, and the training run's other probes
  assert merged.keys() == final.keys()
  assert merged["gap/shapes_captions/modality_gap"] == pytest.approx(
      final["gap/shapes_captions/modality_gap"], abs=1e-5)
  refused = run_module("cliplite_jax.evaluate", f"--workdir={workdir}",
                       "--config.model.proj_dim=8",
                       "--config.eval.probs=('gap',)")
  _one_error_line(refused, "model.proj_dim", "fixed by the checkpoint",
                  "eval.probs", "eval.probes")


def _one_error_line(result, *needles):
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr[-2000:]
  for needle in needles:
    assert needle in lines[0]


def test_unknown_config_key_is_one_line_and_writes_nothing(tmp_path):
  workdir = tmp_path / "never"
  result = run_module("cliplite_jax.main", "--config=configs/default.py",
                f"--workdir={workdir}", "--config.model.text.layrs=3")
  _one_error_line(result, "layrs", "layers")
  assert not workdir.exists()


def test_wrong_type_and_missing_config_file(tmp_path):
  result = run_module("cliplite_jax.main", "--config=configs/default.py",
                f"--workdir={tmp_path / 'w'}", "--config.batch_size=many")
  _one_error_line(result, "batch_size")
  result = run_module("cliplite_jax.main", "--config=configs/nope.py",
                f"--workdir={tmp_path / 'w'}")
  _one_error_line(result, "configs/nope.py")
  assert not (tmp_path / "w").exists()


def test_evaluate_missing_workdir_or_checkpoint(tmp_path):
  result = run_module("cliplite_jax.evaluate", f"--workdir={tmp_path / 'missing'}")
  _one_error_line(result, "does not exist", "cliplite_jax.main")
  empty = tmp_path / "empty"
  empty.mkdir()
  result = run_module("cliplite_jax.evaluate", f"--workdir={empty}")
  _one_error_line(result, "config.json")
  assert list(empty.iterdir()) == []
