"""Bad values are refused before anything is written; what resuming changes
is said; checkpoint retention; a damaged workdir file is named."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from cliplite_jax import config_io, evaluate, run_dir
from cliplite_jax.training import guards, run_start, train
from conftest import run_module, tiny_overrides, wait_until

MAIN = "cliplite_jax.main"


def _one_error_line(result, *needles):
  assert result.returncode == 1, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr[-3000:]
  for needle in needles:
    assert needle in lines[0], lines[0]
  return lines[0]


def test_every_out_of_domain_value_is_named_in_one_line(tiny_data_dir,
                                                        tmp_path):
  workdir = tmp_path / "never"
  base = ["--config=configs/default.py", f"--workdir={workdir}",
          *tiny_overrides(tiny_data_dir)]
  result = run_module(MAIN, *base, "--config.keep_checkpoints=0",
                      "--config.model.image.depth=19",
                      "--config.batch_size=-3", "--config.data.fraction=0",
                      "--config.data.image_size=-5",
                      "--config.log_every_steps=0",
                      "--config.checkpoint_every_steps=0")
  _one_error_line(result, "keep_checkpoints=0", "delete",
                  "model.image.depth=19", "[18, 34, 50, 101, 152]",
                  "batch_size=-3", "data.fraction=0", "data.image_size=-5",
                  "log_every_steps=0", "checkpoint_every_steps=0")
  # Relations between fields: positions for every token; a neighbour row.
  result = run_module(MAIN, *base, "--config.model.text.max_len=8",
                      "--config.batch_size=2")
  _one_error_line(result, "model.text.max_len=8", "data.max_tokens=30",
                  "≥ 2 rows per device")
  assert not workdir.exists()


def test_rewrites_are_checked_before_the_workdir_is_touched(tiny, tmp_path):
  workdir = tmp_path / "never"
  for content in (None, "{not json", '["a", "list"]'):
    path = tmp_path / "rewrites.json"
    if content is not None:
      path.write_text(content)
    tiny.data.rewrites = str(path)
    with pytest.raises(config_io.UserError, match="data.rewrites"):
      train.train_and_evaluate(tiny, str(workdir))
    assert not workdir.exists()


def test_rewrites_matching_no_example_are_refused_before_anything_is_written(
    tiny, tmp_path):
  workdir = tmp_path / "never"
  path = tmp_path / "rewrites.json"
  for content, keys in (
      ({"img_7.jpg": ["a red circle"]},
       "its keys (e.g. 'img_7.jpg') are not the examples' ids"),
      ({}, "it holds no rewrites"), ({"0": []}, "its keys (e.g. '0') are "
                                     "not the examples' ids")):
    path.write_text(json.dumps(content))
    tiny.data.rewrites = str(path)
    with pytest.raises(config_io.UserError) as error:
      train.train_and_evaluate(tiny, str(workdir))
    message = str(error.value)
    assert (f"data.rewrites {path} has rewrites for none of the 256 training "
            f"examples of shapes_captions/tiny train: {keys} (the ids are "
            f"their index in the split, e.g. '0'; a key with an empty list "
            f"has none)") in message
    assert "python -m cliplite_jax.rewrite --data=shapes_captions/tiny" in (
        message)
    assert not workdir.exists()


class _Stop(Exception):
  """Raised by a train step standing in for one that fails to compile."""


def _failing_step(*args, **kwargs):
  def step(state, batch):
    raise _Stop("RESOURCE_EXHAUSTED: out of memory while compiling")
  return step


def test_the_summary_says_how_many_examples_have_rewrites(
    tiny, tmp_path, monkeypatch, capsys):
  path = tmp_path / "rewrites.json"
  # 64 of the 256 training examples (split indices), and keys of none.
  path.write_text(json.dumps({**{str(i): ["an image of a shape"]
                                 for i in range(0, 256, 4)},
                              "not_an_index": ["x"], "7": []}))
  tiny.data.rewrites = str(path)
  monkeypatch.setattr(train, "make_train_step", _failing_step)
  with pytest.raises(_Stop):
    train.train_and_evaluate(tiny, str(tmp_path / "run"))
  out, err = capsys.readouterr()
  assert (f"rewrites: {path}, for 64 of the 256 training examples (25%)"
          in out.splitlines())
  assert (f"warning: data.rewrites {path} has rewrites for only 25% of the "
          f"training examples of shapes_captions/tiny train (64 of 256); the "
          f"others train on their own captions only") in err.splitlines()
  # Half or more: no warning. A sample when ids must be read one by one.
  path.write_text(json.dumps({str(i): ["x"] for i in range(0, 256, 2)}))
  got = run_start.check_data(tiny)
  assert got.rewrites_line.endswith("for 128 of the 256 training examples "
                                    "(50%)")
  assert "warning" not in capsys.readouterr().err
  monkeypatch.setattr(run_start, "REWRITES_SAMPLE", 10)
  monkeypatch.setattr(run_start.sources, "image_id",
                      lambda source, index, example: str(index))
  source = run_start.sources.Source(tfds_name="x", id_key="key")
  assert run_start.rewrite_coverage(
      source, list(range(256)), np.arange(256),
      {str(i): ["x"] for i in range(0, 256, 2)}) == (6, 10)


@pytest.fixture(scope="module")
def kept_every_2(tiny_data_dir, tmp_path_factory):
  """A 6-step run that checkpoints every step, keeps the latest one and
  every 2nd."""
  from conftest import tiny_config
  config = tiny_config(tiny_data_dir)
  config.checkpoint_every_steps = 1
  config.keep_checkpoints = 1
  config.keep_every_steps = 2
  config.eval.probes = ()
  workdir = str(tmp_path_factory.mktemp("kept") / "run")
  train.train_and_evaluate(config, workdir)
  return config, workdir


def _steps(workdir):
  return sorted(int(n) for n in os.listdir(os.path.join(workdir,
                                                        "checkpoints"))
                if n.isdigit())


def test_keep_every_steps_keeps_those_steps(kept_every_2):
  _, workdir = kept_every_2
  assert _steps(workdir) == [2, 4, 6]


def test_resuming_says_what_a_new_length_or_retention_changes(
    kept_every_2, tmp_path, capsys):
  config, workdir = kept_every_2
  config = config_io.ml_collections.ConfigDict(config.to_dict())
  config.total_steps = 12
  config.keep_every_steps = 0
  capsys.readouterr()
  run_start.say_what_resuming_changes(config, workdir, 6, _steps(workdir))
  out = capsys.readouterr().out
  # The saved run ends its cosine at step 6 (lr 0); stretched to 12 steps
  # the same step is mid-schedule.
  assert "total_steps changed from 6 to 12" in out
  assert "lr/image at step 6 goes from 0 to 0.1" in out
  assert "deletes the earlier checkpoints at steps [2, 4, 6]" in out


def test_incompatible_change_is_refused_before_config_json_is_rewritten(
    kept_every_2, tiny_data_dir, tmp_path):
  _, reference = kept_every_2
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  saved = open(os.path.join(workdir, "config.json")).read()
  result = run_module(MAIN, "--config=configs/default.py",
                      f"--workdir={workdir}", *tiny_overrides(tiny_data_dir),
                      "--config.checkpoint_every_steps=1",
                      "--config.model.proj_dim=16", "--allow_config_change")
  _one_error_line(result, "does not match the model")
  assert open(os.path.join(workdir, "config.json")).read() == saved
  assert _steps(workdir) == [2, 4, 6]


def test_a_resume_failing_at_start_up_leaves_config_json_as_it_was(
    kept_every_2, tmp_path, monkeypatch, capsys):
  config, reference = kept_every_2
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  saved = open(os.path.join(workdir, "config.json")).read()
  changed = config_io.ml_collections.ConfigDict(config.to_dict())
  changed.total_steps = 12
  changed.loss.prior_weight = 0.2
  monkeypatch.setattr(train, "make_train_step", _failing_step)
  capsys.readouterr()
  with pytest.raises(_Stop):  # after the restore, at the first step
    train.train_and_evaluate(changed, workdir, allow_config_change=True)
  assert "resuming from step 6" in capsys.readouterr().out
  assert open(os.path.join(workdir, "config.json")).read() == saved
  assert _steps(workdir) == [2, 4, 6]
  # So the next start still says what changed.
  with pytest.raises(config_io.UserError,
                     match=r"loss.prior_weight \(0.1 -> 0.2\)"):
    guards.check_config_change(changed, workdir, allow=False)
  run_start.say_what_resuming_changes(changed, workdir, 6, _steps(workdir))
  assert "total_steps changed from 6 to 12" in capsys.readouterr().out


def test_damaged_config_or_tokenizer_json_is_named(kept_every_2, tmp_path):
  _, reference = kept_every_2
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write('{"seed": 0, "trunc')
  with pytest.raises(config_io.UserError,
                     match=r"config.json is damaged.*checkpoints/6/config"):
    config_io.load_saved(workdir)
  shutil.copy(os.path.join(reference, "config.json"), workdir)
  with open(os.path.join(workdir, "tokenizer.json"), "w") as f:
    f.write("{}")
  result = run_module("cliplite_jax.evaluate", f"--workdir={workdir}")
  _one_error_line(result, "tokenizer.json is damaged")


def test_non_finite_embeddings_are_an_error_not_a_score(kept_every_2):
  config, workdir = kept_every_2
  config = config_io.ml_collections.ConfigDict(config.to_dict())
  config.eval.probes = ("retrieval", "zeroshot")
  step, model, variables, tokenizer, mesh = run_dir.restore(workdir, config)
  variables = jax.tree.map(np.array, jax.device_get(variables))
  head = variables["params"]["image_head"]["shortcut"]["kernel"]
  head[3, :] = np.nan  # one corrupted row of one matrix
  with pytest.raises(config_io.UserError,
                     match=r"\d+ of 128 shapes_captions/tiny test images have "
                           r"non-finite embeddings"):
    evaluate.run_probes(config, model, variables, tokenizer, mesh)


@pytest.mark.parametrize("source,needles", [
    ("import ml_collections\ndef get_config(arg=None):\n  c = (\n  return c\n",
     ["bad.py, line 3", "never closed"]),
    ("import ml_collections\ndef get_config(arg=None):\n"
     "  c = ml_collections.ConfigDict()\n  return c.nosuch\n",
     ["bad.py, line 4", "AttributeError", "nosuch"]),
    ("x = 1\n", ["bad.py defines no get_config"]),
])
def test_config_file_errors_are_one_line_naming_file_and_line(
    tmp_path, source, needles):
  config = tmp_path / "bad.py"
  config.write_text(source)
  result = run_module(MAIN, f"--config={config}",
                      f"--workdir={tmp_path / 'never'}")
  _one_error_line(result, *needles)
  assert not (tmp_path / "never").exists()


def test_every_override_typo_is_reported_with_its_suggestion(tmp_path):
  result = run_module(MAIN, "--config=configs/default.py",
                      f"--workdir={tmp_path / 'never'}",
                      "--config.batch_sise=8", "--config.model.image.dept=50",
                      "--config.modle.proj_dim=8", "--config.optim.nosuch=1")
  _one_error_line(result, "batch_sise (did you mean batch_size?)",
                  "model.image.dept (did you mean model.image.depth?)",
                  "modle.proj_dim (did you mean model.proj_dim?)",
                  "optim.nosuch (optim has ")
  assert not (tmp_path / "never").exists()


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
  workdir = tmp_path / "file"
  workdir.write_text("not a directory")
  for module in (MAIN, "cliplite_jax.evaluate"):
    result = run_module(module, "--config=configs/default.py",
                        f"--workdir={workdir}")
    _one_error_line(result, str(workdir), "is a file")
  assert workdir.read_text() == "not a directory"


def test_more_domains_in_one_line(tiny_data_dir, tmp_path):
  workdir = tmp_path / "never"
  base = ["--config=configs/default.py", f"--workdir={workdir}",
          *tiny_overrides(tiny_data_dir)]
  result = run_module(MAIN, *base, "--config.model.prior_widths=(0,)",
                      "--config.model.text.dropout=1.5",
                      "--config.data.color_jitter=(1,2)")
  _one_error_line(result, "model.prior_widths=(0,)", "model.text.dropout=1.5",
                  "data.color_jitter=(1, 2)")
  result = run_module(MAIN, *base, "--config.optim.group_regex.image=(",
                      "--config.model.text.train_last_layers=5",
                      "--config.optim.lr.image=-1")
  _one_error_line(result, "optim.group_regex.image='('",
                  "model.text.train_last_layers=5", "'image': -1.0")
  result = run_module(MAIN, f"--config={tmp_path}", f"--workdir={workdir}")
  _one_error_line(result, "is not a .py file")
  assert not workdir.exists()


def _has_mapped(pid: int, name: str) -> bool:
  """Whether process `pid` has a file whose path contains `name` mapped."""
  try:
    with open(f"/proc/{pid}/maps") as f:
      return name in f.read()
  except OSError:
    return False


def test_ctrl_c_during_start_up_is_one_line_and_status_130(tiny_data_dir,
                                                           tmp_path):
  """While modules import, and while the state is made and compiled."""
  import signal
  import time
  from conftest import quick_run_args
  for delay in (0.0, 3.0):
    process = run_module(MAIN, *quick_run_args(
        tiny_data_dir, str(tmp_path / f"run_{delay}"),
        "--config.total_steps=100000"), popen=True)
    # Counted from jaxlib's import, which comes after the handler is set
    # (and after main's one re-execution): a loaded machine may take
    # seconds to get there, and Python's own Ctrl-C before it is a traceback.
    wait_until(lambda: _has_mapped(process.pid, "jaxlib"), process,
               "jaxlib's import", timeout=120, poll_s=0.01)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    if delay > 0 and process.returncode == 0:
      # A fast machine (warm compilation cache) reached the loop by then,
      # where Ctrl-C saves: that is the other promise, checked as such.
      assert "preempted: saved a checkpoint at step" in stdout, stdout
      continue
    assert process.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines() == [
        "cliplite_jax.main: error: interrupted; the checkpoints saved so far "
        "are kept, the same command resumes"], stderr[-3000:]
