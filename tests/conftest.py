"""Test set-up: 4 fake CPU devices (set before jax is imported) and a tiny
`shapes_captions` build shared by the whole session."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile

# The tests compile hundreds of small programs and run each for a few steps:
# LLVM's optimisation of XLA:CPU's code (its backend level, 2 by default)
# takes a third of each compile and saves less than that, and XLA:CPU's
# MLIR fusion emitters take about a fifth of what is left (the classic
# emitters compile a tiny train step in 5.5 s instead of 7.7). HLO is
# optimised as usual; the machine code differs in the last bits of some
# floats, alike in every process of the suite (each subprocess gets these
# flags too).
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0 "
                  "--xla_cpu_use_fusion_emitters=false")


def xla_flags(devices: int) -> str:
  """XLA_FLAGS of a test process with `devices` fake CPU devices."""
  return (f"--xla_force_host_platform_device_count={devices} "
          f"{TEST_XLA_FLAGS}")


os.environ["XLA_FLAGS"] = " ".join(
    filter(None, [os.environ.get("XLA_FLAGS", ""), xla_flags(4)]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One XLA compilation cache for the session, shared with the xdist workers
# and the training subprocesses (they inherit it): most of a tiny run is
# compiling the same programs again. The process that made it removes it.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(
      prefix="cliplite_jax_xla_cache_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# JAX writes a cache entry in place, so a process may read one that another
# is still writing: it then compiles the program itself, after a warning
# that would break the tests' exact-stderr checks. (A size limit would make
# JAX lock the cache instead, but that costs about 15 % of the suite.)
_CACHE_READ_WARNING = ("ignore:Error reading persistent compilation cache "
                       "entry:UserWarning")
if _CACHE_READ_WARNING not in os.environ.get("PYTHONWARNINGS", ""):
  os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [
      os.environ.get("PYTHONWARNINGS"), _CACHE_READ_WARNING]))

# Triton (a GPU kernel compiler that torchvision's import pulls in through
# torch._dynamo) loads its own LLVM; loaded into a process where XLA:CPU has
# already compiled, it can crash the process (seen: test_inference.py then
# test_export_image.py in one worker). The CPU tests never use it, and torch
# treats it as absent when its import fails.
sys.modules.setdefault("triton", None)

import pytest  # noqa: E402

from cliplite_jax.data import shapes  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The files that take longest (over ~40 s each on 2 cores), longest first.
# With `-n 2 --dist loadfile`, the workers take whole files from one queue:
# these go first, so that the short files at the end keep both workers busy
# until the last one (xdist's own order, files with the most tests first,
# left a one-test file of two minutes to run alone at the end).
LONG_FILES = ("test_reliability.py", "test_export_hf.py", "test_train.py",
              "test_topology.py", "test_rewrite.py", "test_towers.py",
              "test_validation.py", "test_scale.py", "test_cli.py",
              "test_accumulate.py", "test_gpu_check.py", "test_user_data.py",
              "test_towers_cli.py", "test_evaluate.py", "test_models.py",
              "test_released.py", "test_inference.py", "test_export_image.py",
              "test_interrupts.py", "test_pretrained.py", "test_integrity.py",
              "test_ring.py", "test_suite.py", "test_workdir_lock.py")


def pytest_configure(config):
  # xdist's loadfile/loadscope queue follows the collection order below, not
  # its default reordering by the number of tests in each file.
  if hasattr(config.option, "loadscopereorder"):
    config.option.loadscopereorder = False


def pytest_unconfigure(config):
  if _OWN_CACHE:
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def pytest_collection_modifyitems(items):
  """LONG_FILES first, in their order; the others after, as collected."""
  rank = {name: i for i, name in enumerate(LONG_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
  """A data_dir holding shapes_captions/tiny (256/64/128 images)."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  shapes.prepare(data_dir, "tiny")
  return data_dir


def tiny_config(data_dir: str):
  """The demo config shrunk to seconds: 32 px, 1-layer text, batch 16."""
  from configs import default
  c = default.get_config()
  c.data.name = "shapes_captions/tiny"
  c.data.data_dir = data_dir
  c.data.image_size = 32
  c.data.num_threads = 0
  c.model.image.width = 0.125
  c.model.text.update(hidden=32, layers=1, heads=2, mlp_dim=64, vocab_size=256)
  c.model.proj_dim = 32
  c.batch_size = 16
  c.total_steps = 6
  c.optim.warmup_steps = 2
  c.log_every_steps = 1
  c.checkpoint_every_steps = 3
  c.eval.batch_size = 64
  return c


@pytest.fixture(scope="session")
def photo_set(tmp_path_factory):
  """The real-photo set (tests/photos.py) prepared from folder + JSONL:
  train 9, test 3."""
  import photos
  from cliplite_jax import prepare
  root = tmp_path_factory.mktemp("user_photos")
  captions = photos.write_jsonl(str(root / "raw"))
  out = str(root / "my_photos")
  prepare.run(prepare.Options(source=[captions], out=out,
                              examples_per_shard=4))
  return out


def assert_stream_resumes(config, tokenizer, total: int,
                          stop_after: int) -> list[dict]:
  """The training stream of `config`: a fresh iterator given the state
  after `stop_after` batches yields the uninterrupted batches bit for bit.
  Returns the `total` uninterrupted batches."""
  import numpy as np
  from cliplite_jax.data import pipeline
  straight = iter(pipeline.train_dataset(config, tokenizer))
  batches = [next(straight) for _ in range(total)]
  interrupted = iter(pipeline.train_dataset(config, tokenizer))
  for _ in range(stop_after):
    next(interrupted)
  resumed = iter(pipeline.train_dataset(config, tokenizer))
  resumed.set_state(interrupted.get_state())
  for expected in batches[stop_after:]:
    got = next(resumed)
    assert set(got) == set(expected)
    for key in expected:
      np.testing.assert_array_equal(got[key], expected[key])
  return batches


def assert_stream_resumes_and_splits(config, tokenizer, total: int,
                                     stop_after: int) -> None:
  """`assert_stream_resumes`, and two processes' rows, side by side, are
  the one process's first `stop_after` batches."""
  import numpy as np
  from cliplite_jax.data import pipeline
  batches = assert_stream_resumes(config, tokenizer, total, stop_after)
  halves = [iter(pipeline.train_dataset(config, tokenizer, index, 2))
            for index in range(2)]
  for expected in batches[:stop_after]:
    rows = [next(half) for half in halves]
    for key in expected:
      np.testing.assert_array_equal(
          np.concatenate([r[key] for r in rows]), expected[key])


@pytest.fixture
def tiny(tiny_data_dir):
  return tiny_config(tiny_data_dir)


def with_towers(config, image: str = "vit", text: str = "clip"):
  """`config` (a tiny one) with configs/default.py's `image` and `text`
  towers shrunk as tiny_config shrinks the ResNet and BERT: a 2-block ViT
  of width 32 with patch 8 (a 4 × 4 grid at 32 px), a 1-layer text
  transformer of width 32."""
  from configs import default
  if image != "resnet":
    config.model.image = default.image_tower(image)
    config.model.image.update(variant="Ti/8", width=32, depth=2, heads=2,
                              mlp_dim=64)
  if text != "bert":
    config.model.text = default.text_tower(text)
    config.model.text.update(hidden=32, layers=1, heads=2, mlp_dim=64,
                             vocab_size=300,  # the byte BPE's 258 and more
                             projection=(32 if text == "siglip" else 0))
    config.data.tokenizer = "bpe"
  return config


def vit_run_args(data_dir: str, workdir: str, *extra: str) -> list[str]:
  """`cliplite_jax.main` arguments of configs/vit_demo.py shrunk as
  `with_towers` shrinks it, on shapes_captions/tiny: 8 steps, logged every
  step, checkpoints every 2, no evaluation; `extra` comes last."""
  return ["--config=configs/vit_demo.py", f"--workdir={workdir}",
          "--config.data.name=shapes_captions/tiny",
          f"--config.data.data_dir={data_dir}", "--config.data.image_size=32",
          "--config.model.image.variant=Ti/8",
          "--config.model.image.width=32", "--config.model.image.depth=2",
          "--config.model.image.heads=2", "--config.model.image.mlp_dim=64",
          "--config.model.text.hidden=32", "--config.model.text.layers=1",
          "--config.model.text.heads=2", "--config.model.text.mlp_dim=64",
          "--config.model.text.vocab_size=300", "--config.model.proj_dim=32",
          "--config.batch_size=16", "--config.total_steps=8",
          "--config.optim.warmup_steps=2", "--config.log_every_steps=1",
          "--config.checkpoint_every_steps=2", "--config.eval.batch_size=64",
          "--config.eval.probes=()", *extra]


def run_module(module: str, *args, devices: int = 2, popen: bool = False):
  """Runs `python -m module args` from the repository root, as a user would,
  on `devices` fake CPU devices. Returns the CompletedProcess, or the Popen
  (stdout/stderr piped) when `popen`."""
  env = dict(os.environ,
             XLA_FLAGS=xla_flags(devices))
  command = [sys.executable, "-m", module, *args]
  if popen:
    # As from a terminal: a suite started in the background (`cmd &` in a
    # script) ignores SIGINT, and an ignored signal is inherited across exec
    # (a handled one is reset to the default), so handle it here first.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
      signal.signal(signal.SIGINT, signal.default_int_handler)
    return subprocess.Popen(command, cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  return subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                        env=env, timeout=600)


def tiny_overrides(data_dir: str) -> list[str]:
  """Command-line overrides that shrink configs/default.py to seconds."""
  return ["--config.data.name=shapes_captions/tiny",
          f"--config.data.data_dir={data_dir}", "--config.data.image_size=32",
          "--config.model.image.width=0.125", "--config.model.text.hidden=32",
          "--config.model.text.layers=1", "--config.model.text.mlp_dim=64",
          "--config.model.text.vocab_size=256", "--config.model.proj_dim=32",
          "--config.batch_size=16", "--config.total_steps=4",
          "--config.optim.warmup_steps=1", "--config.log_every_steps=2",
          "--config.checkpoint_every_steps=2", "--config.eval.batch_size=64"]


def eight_step_args(data_dir: str, workdir: str, *extra: str) -> list[str]:
  """`cliplite_jax.main` arguments of a tiny 8-step run that logs every step,
  checkpoints every 2 and skips evaluation; `extra` overrides come last."""
  return ["--config=configs/default.py", f"--workdir={workdir}",
          *tiny_overrides(data_dir), "--config.total_steps=8",
          "--config.log_every_steps=1", "--config.checkpoint_every_steps=2",
          "--config.eval.probes=()", *extra]


@pytest.fixture(scope="session")
def eight_step_run(tiny_data_dir, tmp_path_factory):
  """An uninterrupted `eight_step_args` run (checkpoints 4, 6 and 8 kept),
  shared by the reliability and integrity tests: copy it before changing
  anything in it."""
  workdir = str(tmp_path_factory.mktemp("eight_steps") / "run")
  result = run_module("cliplite_jax.main",
                      *eight_step_args(tiny_data_dir, workdir))
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def quick_run_args(data_dir: str, workdir: str, *extra: str) -> list[str]:
  """`cliplite_jax.main` arguments of a tiny run that logs every step and
  skips evaluation; `extra` overrides come last and win."""
  return ["--config=configs/default.py", f"--workdir={workdir}",
          *tiny_overrides(data_dir), "--config.log_every_steps=1",
          "--config.eval.probes=()", *extra]


def logged_steps(workdir: str) -> list[int]:
  """The steps WORKDIR/metrics.jsonl logged, in file order."""
  import json
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["step"] for line in f]


def wait_until(condition, process, what: str, timeout: float = 400,
               poll_s: float = 0.05) -> None:
  """Polls `condition()` until it is true. Fails with the process's output
  if it exits first, and with TimeoutError naming `what` after `timeout`
  seconds."""
  import time
  deadline = time.time() + timeout
  while not condition():
    if process.poll() is not None:
      out, err = process.communicate()
      raise AssertionError((err or out or "")[-3000:])
    if time.time() >= deadline:
      raise TimeoutError(f"{what} not reached in {timeout:.0f} s")
    time.sleep(poll_s)


def wait_for_step(workdir: str, step: int, process, timeout: float = 400):
  """Polls WORKDIR/metrics.jsonl until it logs `step` (or later); returns
  the latest step logged. Fails with the process's output if it exits
  first."""
  import json
  path = os.path.join(workdir, "metrics.jsonl")
  latest = [None]

  def reached() -> bool:
    if os.path.exists(path):
      with open(path) as f:
        steps = [json.loads(line)["step"] for line in f if line.endswith("\n")]
      latest[0] = max(steps, default=None)
    return latest[0] is not None and latest[0] >= step

  wait_until(reached, process, f"step {step}", timeout)
  return latest[0]


def in_ci() -> bool:
  """Whether the suite runs under CI: the environment variable CI is "true"
  (or "1"), as CI services set it."""
  return os.environ.get("CI", "").strip().lower() in ("true", "1")


def require(module: str):
  """`module`, imported. Where it does not import (absent, or a build for
  another PyTorch that fails at import), the calling test, or at module
  level the whole file, is skipped; under CI (`in_ci()`), whose test extra
  installs every optional package the tests use, it fails instead, so a
  check cannot silently go missing there."""
  import importlib
  try:
    return importlib.import_module(module)
  except Exception as e:  # noqa: BLE001 — a broken build raises others
    message = f"{module} does not import: {type(e).__name__}: {e}"
    if in_ci():
      pytest.fail(f"CI: {message} (the test extra installs it)",
                  pytrace=False)
    pytest.skip(message, allow_module_level=True)


def quick_init(module, *args, **kwargs):
  """`module.init(*args, **kwargs)` as one program compiled without LLVM
  optimisation: eagerly every op compiles on its own, and optimised the
  threefry expansions take ~20 s (see `state.init_sharded`)."""
  import jax
  return jax.jit(lambda: module.init(*args, **kwargs)).lower().compile(
      {"xla_backend_optimization_level": 0})()
