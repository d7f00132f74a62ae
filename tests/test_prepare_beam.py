"""prepare on Apache Beam's DirectRunner: the same shards, bytes and card
as the local pool, and a pipeline killed halfway then rerun holds every
example exactly once."""
import json
import os
import signal

import numpy as np
import pytest
from PIL import Image

import photos
from cliplite_jax import prepare
from cliplite_jax.data import prepare_beam, prepared
from cliplite_jax.data.prepare_options import Options, PrepareError
from conftest import run_module, wait_until
from test_prepare_kill import _all_keys


def _same_output(local, beam) -> None:
  """Every file of two prepared sets byte for byte, the card but for its
  time of creation."""
  names = sorted(os.listdir(local))
  assert names == sorted(os.listdir(beam))
  assert any(n.endswith(".array_record") for n in names)
  for name in names:
    a, b = (open(os.path.join(d, name), "rb").read() for d in (local, beam))
    if name.startswith("dataset_card"):
      a, b = (x.decode().replace(json.loads(
          open(os.path.join(local if x is a else beam,
                            prepared.CARD)).read())["created"], "")
              for x in (a, b))
    assert a == b, name


def _prepare_both(source, tmp_path, **options):
  outs = {}
  for runner in ("local", "direct"):
    outs[runner] = str(tmp_path / runner)
    prepare.run(Options(source=[source], out=outs[runner], num_workers=2,
                        runner=runner, **options))
  return outs


def test_direct_runner_writes_the_local_pools_examples_on_real_photos(
    tmp_path):
  """The real-photo set, as a captions file (partitioned rows) and as
  webdataset shards (units of their own), with a seeded test split."""
  for source in (photos.write_jsonl(str(tmp_path / "jsonl")),
                 photos.write_webdataset(str(tmp_path / "wds"))["train"]):
    outs = _prepare_both(source, tmp_path / os.path.basename(source),
                         examples_per_shard=2,
                         split_fractions="test=0.25")
    _same_output(outs["local"], outs["direct"])


def _synthetic_jsonl(root, count: int) -> str:
  """`count` distinct 8×8 PNGs (a few with no caption, one a broken file)
  and a captions file naming them."""
  os.makedirs(root / "img")
  rng = np.random.default_rng(0)
  lines = []
  for i in range(count):
    name = f"img/{i:05d}.png"
    if i == 7:
      (root / name).write_bytes(b"not an image")
    else:
      Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8)).save(
          root / name)
    caption = "" if i % 997 == 0 else f"synthetic image {i}"
    lines.append(json.dumps({"image": name, "caption": caption}))
  (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
  return str(root / "captions.jsonl")


def test_direct_runner_writes_the_local_pools_examples_on_20k(tmp_path):
  source = _synthetic_jsonl(tmp_path, 20_000)
  outs = _prepare_both(source, tmp_path, examples_per_shard=2500,
                       split_fractions="validation=0.05,test=0.05")
  _same_output(outs["local"], outs["direct"])
  card = prepared.read_card(outs["direct"])
  kept = sum(s["examples"] for s in card["splits"].values())
  assert kept == 20_000 - 1 - len(range(0, 20_000, 997))  # broken, no caption


def test_a_pipeline_killed_halfway_then_rerun_has_every_example_once(
    tmp_path):
  """kill -9 of the driver once some units are done (its workers left to
  end as they may), then the same command: it continues with the units
  without a marker, and every image is in the set exactly once."""
  root = tmp_path / "noise"
  os.makedirs(root / "img")
  rng = np.random.default_rng(1)
  lines = []
  for i in range(240):
    name = f"img/{i:04d}.png"
    Image.fromarray(rng.integers(0, 256, (128, 128, 3), np.uint8)).save(
        root / name)
    lines.append(json.dumps({"image": name, "caption": f"noise {i}"}))
  (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
  out = tmp_path / "out"
  args = (f"--source={root / 'captions.jsonl'}", f"--out={out}",
          "--runner=direct", "--num_workers=2", "--examples_per_shard=10",
          "--split_fractions=test=0.1")
  process = run_module("cliplite_jax.prepare", *args, popen=True)
  work = out / ".work"

  def some_done():
    return work.exists() and len(list(work.glob("unit-*.json"))) >= 3

  wait_until(some_done, process, "3 units done", timeout=300)
  os.kill(process.pid, signal.SIGKILL)
  process.wait()
  done = len(list(work.glob("unit-*.json")))
  assert not (out / prepared.CARD).exists() and done < 24
  rerun = run_module("cliplite_jax.prepare", *args)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "units already done" in rerun.stderr
  counts = _all_keys(out)
  assert sorted(counts) == [f"img/{i:04d}.png" for i in range(240)]
  assert set(counts.values()) == {1}
  assert not work.exists()


def test_beam_options_pass_through_and_bad_ones_are_one_line(tmp_path):
  options = prepare_beam.pipeline_options(
      "direct", "--direct_num_workers=3 --job_name='a b'", 2).get_all_options()
  assert options["runner"] == "DirectRunner"
  assert options["direct_num_workers"] == 3  # the user's, not num_workers
  assert options["direct_running_mode"] == "multi_processing"
  assert options["job_name"] == "a b"
  assert prepare_beam.pipeline_options(
      "spark", "", 2).get_all_options()["runner"] == "SparkRunner"
  source = photos.write_jsonl(str(tmp_path / "jsonl"))
  with pytest.raises(PrepareError, match="give it as prepare's --runner"):
    prepare_beam.pipeline_options("direct", "--runner=DataflowRunner", 2)
  with pytest.raises(PrepareError, match="--beam_options: No closing"):
    prepare.run(Options(source=[source], out=str(tmp_path / "o"),
                        runner="direct", beam_options="--job_name='a"))
  # A captions file's rows are partitioned here: a remote runner cannot
  # read them from this machine.
  with pytest.raises(PrepareError, match="out of the workers' reach"):
    prepare_beam.check_units("dataflow", "gs://bucket/set", ["rows"])
  prepare_beam.check_units("dataflow", "gs://bucket/set", ["webdataset"])
  prepare_beam.check_units("direct", "gs://bucket/set", ["rows"])
