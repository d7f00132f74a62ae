"""The command lines as a user runs them: end to end, and bad input."""
import json
import os
import subprocess
import sys

from conftest import REPO


def _run(module, *args):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                        capture_output=True, text=True, env=env, timeout=600)


def _tiny_overrides(data_dir):
  return ["--config.data.name=shapes_captions/tiny",
          f"--config.data.data_dir={data_dir}", "--config.data.image_size=32",
          "--config.model.image.width=0.125", "--config.model.text.hidden=32",
          "--config.model.text.layers=1", "--config.model.text.mlp_dim=64",
          "--config.model.text.vocab_size=256", "--config.model.proj_dim=32",
          "--config.batch_size=16", "--config.total_steps=4",
          "--config.optim.warmup_steps=1", "--config.log_every_steps=2",
          "--config.checkpoint_every_steps=2", "--config.eval.batch_size=64"]


def test_train_then_evaluate(tiny_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  train = _run("cliplite_jax.main", "--config=configs/default.py",
               f"--workdir={workdir}", *_tiny_overrides(tiny_data_dir))
  assert train.returncode == 0, train.stderr[-3000:]
  assert "step 4/4 | loss" in train.stdout
  assert "zeroshot/shapes_captions/top1" in train.stdout
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  logged = [r for r in records if "loss/total" in r]
  assert [r["step"] for r in logged] == [2, 4]
  for key in ("loss/jsd", "loss/prior_img", "loss/prior_txt", "temperature",
              "lr/image", "lr/text", "lr/other", "grad_norm", "img_per_s"):
    assert key in logged[0], key
  assert os.listdir(os.path.join(workdir, "tb"))

  evaluate = _run("cliplite_jax.evaluate", f"--workdir={workdir}", "--step=2")
  assert evaluate.returncode == 0, evaluate.stderr[-3000:]
  with open(os.path.join(workdir, "eval", "step_2.json")) as f:
    results = json.load(f)
  for k in (1, 5, 10):
    assert 0.0 <= results[f"retrieval/shapes_captions/i2t_r{k}"] <= 1.0
    assert 0.0 <= results[f"retrieval/shapes_captions/t2i_r{k}"] <= 1.0
  assert 0.0 <= results["zeroshot/shapes_captions/top1"] <= 1.0
  assert all(isinstance(v, float) for v in results.values())


def _one_error_line(result, *needles):
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr[-2000:]
  for needle in needles:
    assert needle in lines[0]


def test_unknown_config_key_is_one_line_and_writes_nothing(tmp_path):
  workdir = tmp_path / "never"
  result = _run("cliplite_jax.main", "--config=configs/default.py",
                f"--workdir={workdir}", "--config.model.text.layrs=3")
  _one_error_line(result, "layrs", "layers")
  assert not workdir.exists()


def test_wrong_type_and_missing_config_file(tmp_path):
  result = _run("cliplite_jax.main", "--config=configs/default.py",
                f"--workdir={tmp_path / 'w'}", "--config.batch_size=many")
  _one_error_line(result, "batch_size")
  result = _run("cliplite_jax.main", "--config=configs/nope.py",
                f"--workdir={tmp_path / 'w'}")
  _one_error_line(result, "configs/nope.py")
  assert not (tmp_path / "w").exists()


def test_evaluate_missing_workdir_or_checkpoint(tmp_path):
  result = _run("cliplite_jax.evaluate", f"--workdir={tmp_path / 'missing'}")
  _one_error_line(result, "does not exist", "cliplite_jax.main")
  empty = tmp_path / "empty"
  empty.mkdir()
  result = _run("cliplite_jax.evaluate", f"--workdir={empty}")
  _one_error_line(result, "config.json")
  assert list(empty.iterdir()) == []
