"""prepare under kill -9, SIGTERM, a second prepare and damaged shards:
never success over a truncated shard, every example exactly once."""
import collections
import json
import os
import signal
import time

import numpy as np
import pytest
from PIL import Image

from cliplite_jax import prepare
from cliplite_jax.data import prepared
from cliplite_jax.file_lock import FileLock
from conftest import run_module, wait_until

NUM_IMAGES = 320


@pytest.fixture(scope="module")
def noise_photos(tmp_path_factory):
  """NUM_IMAGES incompressible PNGs and a JSONL captions file naming them:
  {"jsonl": path, "keys": every image path}."""
  root = tmp_path_factory.mktemp("noise")
  rng = np.random.default_rng(0)
  lines, keys = [], []
  for i in range(NUM_IMAGES):
    name = f"img/{i:04d}.png"
    os.makedirs(root / "img", exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (128, 128, 3), np.uint8)).save(
        root / name)
    lines.append(json.dumps({"image": name, "caption": f"noise number {i}"}))
    keys.append(name)
  with open(root / "captions.jsonl", "w") as f:
    f.write("\n".join(lines) + "\n")
  return {"jsonl": str(root / "captions.jsonl"), "keys": keys}


def _args(photos_, out):
  return (f"--source={photos_['jsonl']}", f"--out={out}",
          "--num_workers=2", "--examples_per_shard=40",
          "--split_fractions=test=0.1")


def _children(pid: int) -> set[int]:
  """PIDs whose parent is `pid` (Linux /proc)."""
  found = set()
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat") as f:
          fields = f.read().rpartition(")")[2].split()
      except OSError:
        continue
      if int(fields[1]) == pid:
        found.add(int(entry))
  return found


def _alive(pid: int) -> bool:
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rpartition(")")[2].split()[0] != "Z"
  except OSError:
    return False


def _all_keys(out) -> collections.Counter:
  """How often each image key is in the prepared set (every record read)."""
  card = prepared.read_card(str(out))
  counts = collections.Counter()
  for split in card["splits"]:
    examples = prepared.Examples(str(out), split)
    counts.update(examples[i]["key"] for i in range(len(examples)))
  return counts


def _signal(pids, how) -> None:
  """Sends `how` to each of `pids` that is still there."""
  for pid in pids:
    try:
      os.kill(pid, how)
    except ProcessLookupError:
      pass


def _markers(out) -> set[str]:
  work = os.path.join(out, ".work")
  return {n for n in os.listdir(work) if n.startswith("unit-")
          and n.endswith(".json")} if os.path.isdir(work) else set()


def _stop_mid_conversion(noise_photos, out, how):
  """Starts prepare and, once its first unit is done (others in flight),
  freezes its workers, sends `how` to prepare, lets the workers go on and
  returns (process, worker PIDs, the units done before the signal)."""
  process = run_module("cliplite_jax.prepare", *_args(noise_photos, out),
                       popen=True)
  wait_until(lambda: _markers(out), process, "the first converted unit",
             timeout=300, poll_s=0.01)
  workers = _children(process.pid)
  _signal(workers, signal.SIGSTOP)
  done = _markers(out)
  process.send_signal(how)
  if how != signal.SIGKILL:  # prepare stops its workers itself, then exits
    time.sleep(1)
    _signal(workers, signal.SIGCONT)
  process.wait(timeout=120)
  _signal(workers, signal.SIGCONT)
  return process, workers, done


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM],
                         ids=["kill-9", "sigterm"])
def test_stopped_prepare_leaves_no_worker_and_a_rerun_is_exact(
    noise_photos, tmp_path, how):
  out = str(tmp_path / "out")
  process, workers, done = _stop_mid_conversion(noise_photos, out, how)
  if how == signal.SIGTERM:
    assert process.returncode == 143
    assert "terminated" in process.stderr.read()
  assert workers, "prepare should convert in worker processes"
  # The kernel ends them with their parent: no unit of theirs finishes.
  deadline = time.time() + 1
  while any(_alive(w) for w in workers) and time.time() < deadline:
    time.sleep(0.1)
  assert not any(_alive(w) for w in workers), "workers outlived prepare"
  time.sleep(1)
  assert _markers(out) == done, "a unit was finished after prepare ended"
  assert not os.path.exists(os.path.join(out, prepared.CARD))
  result = run_module("cliplite_jax.prepare", *_args(noise_photos, out))
  assert result.returncode == 0, result.stderr[-2000:]
  assert _all_keys(out) == collections.Counter(noise_photos["keys"])
  assert not os.path.exists(os.path.join(out, ".work"))
  assert not os.path.exists(os.path.join(out, ".prepare.lock"))


def test_a_second_prepare_on_one_out_is_refused_and_the_first_finishes(
    noise_photos, tmp_path):
  out = str(tmp_path / "out")
  first = run_module("cliplite_jax.prepare", *_args(noise_photos, out),
                     popen=True)
  lock = os.path.join(out, ".prepare.lock")
  wait_until(lambda: os.path.exists(lock) and os.path.getsize(lock) > 0,
             first, "the first prepare's lock", timeout=300, poll_s=0.01)
  first.send_signal(signal.SIGSTOP)  # held mid-run, its lock with it
  try:
    second = run_module("cliplite_jax.prepare", *_args(noise_photos, out))
  finally:
    first.send_signal(signal.SIGCONT)
  assert second.returncode == 1
  lines = second.stderr.strip().splitlines()
  assert len(lines) == 1 and "being prepared by another prepare" in lines[0]
  assert f"PID {first.pid}" in lines[0]
  first.wait(timeout=300)
  assert first.returncode == 0, first.stderr.read()[-2000:]
  assert _all_keys(out) == collections.Counter(noise_photos["keys"])


def test_a_lock_left_by_a_dead_holder_does_not_block(noise_photos, tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  holder = FileLock(str(out / ".prepare.lock"))
  assert holder.try_acquire() is None
  assert FileLock(str(out / ".prepare.lock")).try_acquire().startswith("PID")
  holder.release()  # as when its process ends: the file stays, unlocked
  card = prepare.run(prepare.Options(source=[noise_photos["jsonl"]],
                                     out=str(out), examples_per_shard=64))
  assert sum(s["examples"] for s in card["splits"].values()) == NUM_IMAGES


def _flip_byte(path, offset_from_end=200):
  with open(path, "r+b") as f:
    f.seek(-offset_from_end, os.SEEK_END)
    byte = f.read(1)
    f.seek(-offset_from_end, os.SEEK_END)
    f.write(bytes([byte[0] ^ 0x40]))


def test_damaged_or_truncated_shards_are_named_before_reading(
    noise_photos, tmp_path):
  out = str(tmp_path / "out")
  card = prepare.run(prepare.Options(source=[noise_photos["jsonl"]], out=out,
                                     examples_per_shard=64))
  shards = card["splits"]["train"]["shards"]
  assert all({"bytes", "crc32"} <= set(s) for s in shards)
  victim = os.path.join(out, shards[-1]["file"])
  _flip_byte(victim)
  with pytest.raises(prepared.DamagedShardError, match=(
      f"{victim}: damaged prepared shard.*CRC32")):
    prepared.Examples(out, "train")
  with open(victim, "r+b") as f:
    f.truncate(os.path.getsize(victim) - 1000)
  with pytest.raises(prepared.DamagedShardError, match="bytes, prepare wrote"):
    prepared.Examples(out, "train")


def test_a_damaged_done_unit_is_converted_again(noise_photos, tmp_path,
                                                monkeypatch):
  """A unit marked done whose shard was cut short (as a leftover writer
  could do) is redone on the rerun, not trusted."""
  out = tmp_path / "out"
  real_convert, calls = prepare.prepare_units.convert, []

  def convert_then_stop(*job):
    if len(calls) == 2:
      raise KeyboardInterrupt
    calls.append(job[2])
    real_convert(*job)

  monkeypatch.setattr(prepare.prepare_units, "convert", convert_then_stop)
  options = prepare.Options(source=[noise_photos["jsonl"]], out=str(out),
                            examples_per_shard=64)
  with pytest.raises(KeyboardInterrupt):
    prepare.run(options)
  monkeypatch.setattr(prepare.prepare_units, "convert", real_convert)
  marker = json.loads((out / ".work" / f"unit-{calls[0]}.json").read_text())
  shard = out / next(iter(marker["splits"].values()))["file"]
  with open(shard, "r+b") as f:
    f.truncate(shard.stat().st_size // 2)
  prepare.run(options)
  assert _all_keys(out) == collections.Counter(noise_photos["keys"])


def _count(out) -> int:
  return sum(_all_keys(out).values())


@pytest.mark.parametrize("with_spec", [True, False],
                         ids=["spec-written", "before-the-spec"])
def test_a_run_killed_while_partitioning_is_continued(noise_photos, tmp_path,
                                                      with_spec):
  """What kill -9 leaves while a captions file is partitioned: half the
  buckets, and (this version) the spec, or (older ones) no spec."""
  out = tmp_path / "out"
  options = prepare.Options(source=[noise_photos["jsonl"]], out=str(out),
                            examples_per_shard=64)
  rows = out / ".work" / "rows" / "source0"
  rows.mkdir(parents=True)
  (rows / "bucket-00000.jsonl").write_text('{"image": "img/0000.png", ')
  if with_spec:
    (out / ".work" / "spec.json").write_text(json.dumps(
        prepare.make_spec(options)))
  prepare.run(options)
  assert _all_keys(out) == collections.Counter(noise_photos["keys"])


def test_a_run_stopped_before_or_while_its_card_is_written_is_finished(
    noise_photos, tmp_path, monkeypatch):
  out = tmp_path / "out"
  options = prepare.Options(source=[noise_photos["jsonl"]], out=str(out),
                            examples_per_shard=64)
  real = prepare.prepare_units.card_markdown

  def stop(card):
    raise KeyboardInterrupt

  monkeypatch.setattr(prepare.prepare_units, "card_markdown", stop)
  with pytest.raises(KeyboardInterrupt):
    prepare.run(options)
  assert not (out / prepared.CARD).exists() and (out / ".work").exists()
  # As an older version's non-atomic write left it when killed mid-write.
  (out / prepared.CARD).write_text('{"format": "cliplite_prepared", "spl')
  monkeypatch.setattr(prepare.prepare_units, "card_markdown", real)
  prepare.run(options)
  assert _count(out) == NUM_IMAGES
  assert not (out / ".work").exists()
  assert sorted(p.name for p in out.iterdir() if not p.name.endswith(
      ".array_record")) == ["dataset_card.json", "dataset_card.md"]


def test_an_out_made_by_another_prepare_meanwhile_is_not_under_a_file(
    tmp_path, monkeypatch):
  """Two prepares making one new --out: the slower mkdir finds it made."""
  from etils import epath
  from cliplite_jax.data import prepare_output
  out = epath.Path(tmp_path / "new")
  out.mkdir()
  real_exists = type(out).exists
  monkeypatch.setattr(type(out), "exists", lambda self: False
                      if str(self) == str(out) else real_exists(self))
  assert prepare_output.create_out(out) is False


def test_an_absolute_path_to_an_image_is_the_relative_one(noise_photos,
                                                          tmp_path, capsys):
  root = os.path.dirname(noise_photos["jsonl"])
  source = tmp_path / "leak.jsonl"
  source.write_text("".join(json.dumps(r) + "\n" for r in (
      {"image": "img/0007.png", "caption": "a", "split": "train"},
      {"image": os.path.join(root, "img", "0007.png"), "caption": "b",
       "split": "test"},
      {"image": "img/0008.png", "caption": "c", "split": "train"})))
  card = prepare.run(prepare.Options(source=[str(source)],
                                     out=str(tmp_path / "out"), images=root))
  assert {k: v["examples"] for k, v in card["splits"].items()} == {"train": 2}
  assert card["split_conflicts"]["count"] == 1


def test_a_stop_after_the_card_keeps_the_dataset(noise_photos, tmp_path,
                                                 monkeypatch):
  """Ctrl-C while the finished run cleans up must not roll it back."""
  out = tmp_path / "out"
  options = prepare.Options(source=[noise_photos["jsonl"]], out=str(out),
                            examples_per_shard=64)

  def stop(card):
    raise KeyboardInterrupt

  monkeypatch.setattr(prepare, "_summary", stop)
  with pytest.raises(KeyboardInterrupt):
    prepare.run(options)
  monkeypatch.undo()
  assert _count(out) == NUM_IMAGES
  # A rerun of a finished set takes no lock and writes nothing (a read-only
  # mount is fine).
  monkeypatch.setattr(prepare, "lock_out", lambda root: pytest.fail("lock"))
  assert prepare.run(options)["splits"] == prepared.read_card(str(out))[
      "splits"]


def test_a_users_own_work_folder_is_not_deleted(noise_photos, tmp_path):
  out = tmp_path / "out"
  (out / ".work").mkdir(parents=True)
  (out / ".work" / "mine.txt").write_text("keep me")
  (out / "notes.txt").write_text("keep me too")
  with pytest.raises(prepare.PrepareError, match="holds other files"):
    prepare.run(prepare.Options(source=[noise_photos["jsonl"]], out=str(out)))
  assert (out / ".work" / "mine.txt").read_text() == "keep me"
  assert (out / "notes.txt").exists()


def test_an_older_versions_partition_is_continued(noise_photos, tmp_path):
  """Buckets partitioned before image hashes were kept: rebuilt, equal."""
  from etils import epath
  from cliplite_jax.data import prepare_units, readers
  root = os.path.dirname(noise_photos["jsonl"])
  directory = epath.Path(tmp_path / "rows")
  paths, images = prepare_units.partition(
      lambda: readers.jsonl_rows(noise_photos["jsonl"]), directory, 64, root)
  (directory / "images.npy").unlink()
  again, rebuilt = prepare_units.partition(
      lambda: readers.jsonl_rows(noise_photos["jsonl"]), directory, 64, root)
  assert again == paths and np.array_equal(rebuilt, images)
  assert len(images) == NUM_IMAGES


def test_a_csv_with_lone_carriage_returns_is_one_error(tmp_path):
  from cliplite_jax.data import readers
  source = tmp_path / "mac.csv"
  source.write_bytes(b"image,caption\ra.jpg,x\rb.jpg,y\r")
  with pytest.raises(readers.SourceError, match="mac.csv:1: .*line ends"):
    list(readers.csv_rows(str(source), "image", "caption", "split", ","))
