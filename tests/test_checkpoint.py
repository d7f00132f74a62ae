"""checkpoint_saver.OverlappedSaver and the packed state it saves."""
import os
import subprocess
import sys
import types

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

from conftest import xla_flags
from cliplite_jax.data import pipeline, vocabulary
from cliplite_jax.models import cliplite
from cliplite_jax.training import (checkpoint, checkpoint_saver, guards, optim,
                                   packing, parallel, state as state_lib)


def _raw(tree):
  """Host values, typed PRNG keys as their raw bits."""
  return jax.device_get(jax.tree.map(
      lambda x: jax.random.key_data(x) if _is_key(x) else x, tree))


def _is_key(x):
  return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


@pytest.fixture
def run(tiny, tmp_path):
  """The tiny config's model and state on 4 devices, a data iterator."""
  mesh = parallel.make_mesh()
  model, tx = cliplite.build(tiny), optim.build(tiny)
  state = state_lib.init_sharded(tiny, model, tx, mesh, pretrained=False)
  tokenizer = vocabulary.workdir_tokenizer(tiny, str(tmp_path))
  data_iter = iter(pipeline.train_dataset(tiny, tokenizer))
  return tiny, mesh, model, tx, state, data_iter


# Stands in for the train step: a new state in place of the donated one.
_step = jax.jit(lambda state: jax.tree.map(
    lambda x: x if _is_key(x) else x + 1, state), donate_argnums=0)


def test_staged_checkpoint_survives_the_next_step(run, tmp_path):
  """Staged at step 1, saved after step 2 was dispatched (donating step 1's
  state) and the iterator had moved on: the checkpoint holds step 1's state
  and resumes the data at batch 2."""
  config, mesh, model, tx, state, data_iter = run
  mngr = checkpoint.manager(str(tmp_path / "run"), config)
  saver = checkpoint_saver.OverlappedSaver(mngr, config,
                                           guards.NonFiniteGuard(), None)
  next(data_iter)
  state = _step(state)
  expected = _raw(state)
  saver.stage(1, state, data_iter)
  second_batch = next(data_iter)
  state = _step(state)
  saver.flush()
  saver.close()
  assert saver.last_saved == 1 and mngr.all_steps() == [1]

  fresh_iter = iter(pipeline.train_dataset(
      config, vocabulary.workdir_tokenizer(config, str(tmp_path))))
  abstract = state_lib.abstract_state(config, model, tx, mesh)
  restored = checkpoint.restore(mngr, 1, abstract, fresh_iter,
                                config.batch_size)
  jax.tree.map(np.testing.assert_array_equal, _raw(restored), expected)
  assert jax.tree.map(lambda x: x.sharding, restored) == jax.tree.map(
      lambda x: x.sharding, abstract)
  jax.tree.map(np.testing.assert_array_equal, next(fresh_iter), second_batch)
  mngr.close()


def test_flush_refuses_a_nonfinite_record_and_saves_nothing(run, tmp_path):
  config, _, _, _, state, data_iter = run
  mngr = checkpoint.manager(str(tmp_path / "run"), config)
  guard = guards.NonFiniteGuard()
  saver = checkpoint_saver.OverlappedSaver(mngr, config, guard, 7)
  guard.update(8, {"loss/total": jnp.float32(jnp.nan),
                   "grad_norm": jnp.float32(1.0)})
  saver.stage(8, state, data_iter)
  # A later finite step does not clear the record staged with step 8.
  guard.update(9, {"loss/total": jnp.float32(1.0),
                   "grad_norm": jnp.float32(1.0)})
  with pytest.raises(guards.NonFiniteError,
                     match="loss/total is not finite at step 8.*step 7"):
    saver.flush()
  saver.flush()  # nothing staged any more
  saver.close()
  assert mngr.all_steps() == [] and saver.last_saved == 7
  mngr.close()


def _mesh(shape):
  devices = np.array(jax.devices()[:int(np.prod(shape))]).reshape(shape)
  return jax.sharding.Mesh(devices, ("data", "fsdp"))


def _sharding(mesh, *spec):
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))


def _put(x, mesh, *spec):
  return jax.device_put(x, _sharding(mesh, *spec))


def test_pack_then_unpack_onto_other_shardings(monkeypatch):
  """Replicated leaves share dtype buckets no larger than BUCKET_BYTES (or
  one leaf); sharded, key and empty leaves stay whole; unpacking onto
  another mesh and other shardings gives the same values."""
  monkeypatch.setattr(packing, "BUCKET_BYTES", 64)
  mesh = _mesh((2, 2))
  rng = np.random.default_rng(0)
  values = {"w": rng.normal(size=(3, 4)).astype(np.float32),
            "b": rng.normal(size=7).astype(np.float32),
            "c": rng.normal(size=2).astype(np.float32),
            "big": rng.normal(size=(8, 6)).astype(np.float32),
            "n": np.int32(42), "e": np.zeros((0, 3), np.float32),
            "h": rng.normal(size=4).astype(jnp.bfloat16)}
  tree = {k: _put(v, mesh) for k, v in values.items()}
  tree["big"] = _put(values["big"], mesh, "fsdp")
  tree["key"] = _put(jax.random.key(3), mesh)
  lay = packing.layout(tree)
  entries = {e["path"]: e for e in lay["leaves"]}
  bucket_of = {path[2:-2]: e["bucket"] for path, e in entries.items()}
  assert [bucket_of[k] for k in ("big", "e", "key")] == [None] * 3
  members = {}
  for e in lay["leaves"]:
    if e["bucket"] is not None:
      members.setdefault(e["bucket"], []).append(e)
  for b, bucket in enumerate(lay["buckets"]):
    sizes = [int(np.prod(e["shape"])) for e in members[b]]
    offsets = [e["offset"] for e in members[b]]
    assert offsets == list(np.cumsum([0] + sizes[:-1]))
    assert bucket["size"] == sum(sizes)
    assert {e["dtype"] for e in members[b]} == {bucket["dtype"]}
    itemsize = np.dtype(bucket["dtype"]).itemsize
    assert bucket["size"] * itemsize <= 64 or len(sizes) == 1
  # w and b (48 + 28 bytes) need two buckets; c (8 bytes) joins b's.
  assert bucket_of["b"] == bucket_of["c"] != bucket_of["w"]

  packed = packing.pack(tree, lay)
  other = _mesh((1, 4))  # the same devices, another mesh
  target = {k: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                    sharding=_sharding(other))
            for k, x in tree.items()}
  target["w"] = target["w"].update(sharding=_sharding(other, None, "fsdp"))
  target["big"] = target["big"].update(sharding=_sharding(other, "fsdp"))
  # Whole leaves restore on their own target shardings (as Orbax would).
  targets = packing.abstract_packed(lay, target)
  packed = {k: jax.device_put(v, targets[k].sharding)
            for k, v in packed.items()}
  restored = packing.unpack(packed, lay, target)
  for k, v in values.items():
    np.testing.assert_array_equal(jax.device_get(restored[k]), v)
    assert restored[k].sharding == target[k].sharding
  np.testing.assert_array_equal(jax.random.key_data(restored["key"]),
                                jax.random.key_data(jax.random.key(3)))


def test_layout_mismatch_names_the_leaf():
  tree = {"a": jnp.zeros((2, 3)), "b": jnp.zeros(4)}
  lay = packing.layout(tree)
  packing.check_matches(lay, tree, "step 5")
  with pytest.raises(ValueError, match=r"step 5 does not match.*\['b'\]"):
    packing.check_matches(lay, {"a": jnp.zeros((2, 3)), "b": jnp.zeros(5)},
                          "step 5")
  with pytest.raises(ValueError, match="step 5 has 2 arrays, the model 1"):
    packing.check_matches(lay, {"a": jnp.zeros((2, 3))}, "step 5")


def test_checkpoint_saved_unpacked_still_restores(run, tmp_path):
  """Checkpoints written before packing hold one array per leaf."""
  config, mesh, model, tx, state, data_iter = run
  mngr = checkpoint.manager(str(tmp_path / "run"), config)
  expected = _raw(state)
  mngr.save(2, args=ocp.args.Composite(**{
      checkpoint.STATE: ocp.args.StandardSave(state),
      checkpoint.DATA_ITER: grain.checkpoint.CheckpointSave(data_iter),
      checkpoint.CONFIG: ocp.args.JsonSave(config.to_dict())}))
  mngr.wait_until_finished()
  restored = checkpoint.restore(
      mngr, 2, state_lib.abstract_state(config, model, tx, mesh))
  jax.tree.map(np.testing.assert_array_equal, _raw(restored), expected)
  mngr.close()


# Saves step 1, then caps the process's file size so that step 2's arrays
# cannot be written. Eight large sharded leaves are eight concurrent
# TensorStore writes: when the first fails, Orbax closes its event loop while
# the others are still running, and their completions then call into the
# closed loop.
_FAILING_SAVE = """
import json, resource, sys
import jax, ml_collections, numpy as np
from cliplite_jax.training import checkpoint, checkpoint_saver, guards

class Position:
  def get_state(self):
    return json.dumps({"next_index": 0}).encode()

mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
# Random values, as a compressed constant would fit under the cap.
rng = np.random.default_rng(0)
state = {f"w{i}": jax.device_put(rng.random(2**20, np.float32), sharded)
         for i in range(8)}
config = ml_collections.ConfigDict({"keep_checkpoints": 3})
mngr = checkpoint.manager(sys.argv[1], config)
saver = checkpoint_saver.OverlappedSaver(mngr, config, guards.NonFiniteGuard(),
                                         None)
saver.stage(1, state, Position())
saver.flush()
saver.wait()
resource.setrlimit(resource.RLIMIT_FSIZE, (10**6, 10**6))
saver.stage(2, state, Position())
try:
  saver.flush()
  saver.wait()
except checkpoint_saver.SaveError as e:
  print(e)
finally:
  saver.close()
  mngr.close()
"""


def test_failed_save_prints_no_traceback(tmp_path):
  """The late TensorStore completions of a failed save are not printed: the
  SaveError line is the whole story, and step 1 stays."""
  workdir = tmp_path / "run"
  env = dict(os.environ, XLA_FLAGS=xla_flags(4))
  result = subprocess.run([sys.executable, "-c", _FAILING_SAVE, str(workdir)],
                          capture_output=True, text=True, env=env,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "saving the checkpoint of step 2" in result.stdout
  assert "File too large" in result.stdout
  assert "the last complete checkpoint, step 1, is kept" in result.stdout
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert os.listdir(workdir / "checkpoints") == ["1"]


def test_late_write_hook_drops_only_closed_loop_errors():
  seen = []
  hook = checkpoint_saver._DropLateWriteCallbacks(seen.append)  # pylint: disable=protected-access

  def unraisable(error, obj=None):
    return types.SimpleNamespace(exc_type=type(error), exc_value=error,
                                 exc_traceback=None, err_msg=None, object=obj)

  hook(unraisable(RuntimeError("Event loop is closed")))
  hook(unraisable(RuntimeError("Event loop is closed"), obj="a coroutine"))
  others = [unraisable(RuntimeError("Event loop is stopped")),
            unraisable(ValueError("Event loop is closed")),
            unraisable(OSError("disk full"), obj="a coroutine")]
  for other in others:
    hook(other)
  assert seen == others


def test_partial_save_removal_gives_up_on_a_folder_it_cannot_remove(
    tmp_path, monkeypatch):
  """A folder that survives every removal (read-only disk) is tried 10
  times, not for SETTLE_LIMIT_S; other steps' folders are never touched."""
  directory = tmp_path / "run" / "checkpoints"
  for name in ("12.orbax-checkpoint-tmp", "2", "22.orbax-checkpoint-tmp"):
    (directory / name / "d").mkdir(parents=True)
  # Read-only: a training manager would clean these folders up itself.
  config = ml_collections.ConfigDict({"keep_checkpoints": 3})
  mngr = checkpoint.manager(str(tmp_path / "run"), config, read_only=True)
  saver = checkpoint_saver.OverlappedSaver(mngr, config,
                                           guards.NonFiniteGuard(), None)
  attempts = []
  monkeypatch.setattr(type(epath.Path(directory)), "rmtree",
                      lambda path, missing_ok=False: attempts.append(path))
  saver._remove_partial_save(2, settle_s=0.5)  # pylint: disable=protected-access
  assert attempts == []  # no folder of step 2's save
  saver._remove_partial_save(12, settle_s=0.5)  # pylint: disable=protected-access
  assert [p.name for p in attempts] == ["12.orbax-checkpoint-tmp"] * 10
  monkeypatch.undo()
  saver._remove_partial_save(12, settle_s=0.0)  # pylint: disable=protected-access
  assert sorted(os.listdir(directory)) == ["2", "22.orbax-checkpoint-tmp"]
  saver.close()
  mngr.close()
