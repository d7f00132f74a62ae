"""The sharded train step and the training loop (resume)."""
import json
import re
import os
import shutil

import jax
import numpy as np
import pytest

from cliplite_jax import config_io, objectives

from cliplite_jax.objectives import losses

from cliplite_jax import prepare, validation
from cliplite_jax.data import augment
from cliplite_jax.models import cliplite
from cliplite_jax.training import (optim, parallel, run_start,
                                   state as state_lib, train)


def _random_batch(config, rng):
  b, s, length = config.batch_size, config.data.image_size, config.data.max_tokens
  lengths = rng.integers(4, length, size=b)
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  return {"images": rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
          "input_ids": (rng.integers(5, 200, (b, length)) * mask).astype(np.int32),
          "attention_mask": mask}


def _reference_outputs(model, state, batch):
  """The first step's forward pass, unsharded, with the step's own keys
  (and the batch's second views, "*_aug", when it has them)."""
  dropout_rng, prior_rng = jax.random.split(jax.random.fold_in(state.rng, 0))
  second = {k: batch[k] for k in ("input_ids_aug", "attention_mask_aug")
            if k in batch}
  if "images_aug" in batch:
    second["images_aug"] = augment.normalize(batch["images_aug"])
  forward = jax.jit(lambda variables, batch, second: model.apply(
      variables, augment.normalize(batch["images"]), batch["input_ids"],
      batch["attention_mask"], train=True, **second,
      rngs={"dropout": dropout_rng, "prior": prior_rng},
      mutable=["batch_stats"])[0])
  return forward(jax.device_get(state.variables), batch, second)


def _slice(outputs, start, stop):
  """Rows start:stop of the batch-shaped outputs (parameters the objective
  applies, under "replicated", whole)."""
  return {k: v if k == "replicated" or not v.ndim else v[start:stop]
          for k, v in outputs.items()}


def _ynnpack_ops(hlo_text: str) -> set[str]:
  """Kinds of the matrix ops (dot, convolution) that compiled CPU HLO hands to
  YNNPACK fusions."""
  called = {re.search(r"calls=(%[\w.\-]+)", line).group(1)
            for line in hlo_text.splitlines() if '"__ynn_fusion"' in line}
  kinds = set()
  for block in re.split(r"\n\n", hlo_text):
    header = block.lstrip().split(" ", 1)[0]
    if header in called:
      kinds |= set(re.findall(r" (dot|convolution)\(", block))
  return kinds


@pytest.mark.parametrize("critic", ["dot", "condot", "dotcon", "clusters"])
def test_sharded_step_rolls_captions_within_each_device(tiny, critic):
  """Also: a batch carrying colour jitter parameters trains on the images
  jittered by torchvision's float formulas (written out independently in
  tests/test_augment.py), applied before normalising. With the reference's
  other critics and its image–image and text–text terms (second views in
  the batch), each term rolls within each device too, and the concat
  critics' parameters reach every device whole. With cluster negatives,
  each device draws its rows' negatives from its own rows, with its own
  key."""
  from test_augment import _torchvision_float
  from cliplite_jax.objectives import clusters
  assert jax.device_count() == 4
  if critic == "clusters":
    tiny.loss.negatives = "clusters"
    tiny.loss.clusters = dict(k=2, start_step=0, every_steps=1, iterations=3)
  else:
    tiny.loss.critic = critic
  if critic in ("condot", "dotcon"):
    tiny.loss.image_image, tiny.loss.text_text = 1.0, 0.5
  mesh = parallel.make_mesh(4)
  model, tx = cliplite.build(tiny), optim.build(tiny)
  state = state_lib.init_sharded(tiny, model, tx, mesh)
  rng = np.random.default_rng(0)
  batch = _random_batch(tiny, rng)
  if critic in ("condot", "dotcon"):
    second = _random_batch(tiny, rng)
    batch.update({f"{k}_aug": v for k, v in second.items()})
  params = [augment.color_jitter_params(rng, p=0.8)
            for _ in range(tiny.batch_size)]
  batch["color_jitter"] = np.stack([f for f, _ in params])
  batch["color_order"] = np.stack([o for _, o in params])
  assert (batch["color_jitter"] != augment.NEUTRAL_JITTER).any()
  jittered = np.stack([_torchvision_float(image, f, o).astype(np.float32)
                       for image, (f, o) in zip(batch["images"], params)])

  # Reference on the host's default device: the same forward pass, then the
  # objective on each quarter of the batch separately.
  outputs = _reference_outputs(model, state, dict(batch, images=jittered))
  quarter = tiny.batch_size // 4
  by_device = [{} for _ in range(4)]
  if critic == "clusters":  # two clusters of this batch's captions
    centroids = clusters.kmeans(outputs["txt_emb"], 2, 3, jax.random.key(5))
    state = state.replace(centroids=centroids)
    key = objectives.loss_key(train.step_rngs(state.rng, state.step)[1])
    by_device = [{"replicated": {
        "centroids": centroids, "cluster_key": jax.random.fold_in(key, i),
        "clusters_on": True}} for i in range(4)]
  per_device = [losses.cliplite_objective(dict(
      _slice(outputs, i * quarter, (i + 1) * quarter), **by_device[i]),
      tiny.loss)[1] for i in range(4)]
  expected = {k: np.mean([m[k] for m in per_device]) for k in per_device[0]}
  if critic != "clusters":
    whole_batch_roll = losses.cliplite_objective(outputs, tiny.loss)[1]

  step = train.make_train_step(tiny, model, tx, mesh)
  new_state, metrics = step(state, parallel.shard_batch(batch, mesh))
  keys = ["loss/total", "loss/jsd", "loss/prior_img", "loss/prior_txt"]
  if critic == "clusters":
    keys.append("negatives/same_cluster")
    assert 0 < expected["negatives/same_cluster"] <= 1
  elif critic != "dot":
    keys += ["loss/image_image", "loss/text_text"]
    # The total is the weighted sum of the terms.
    np.testing.assert_allclose(expected["loss/total"], 0.9 * (
        expected["loss/jsd"] + expected["loss/image_image"]
        + 0.5 * expected["loss/text_text"]) + 0.1 * (
            expected["loss/prior_img"] + expected["loss/prior_txt"]),
        rtol=1e-5)
  for key in keys:
    np.testing.assert_allclose(metrics[key], expected[key], rtol=2e-5,
                               atol=2e-6, err_msg=key)
  if critic != "clusters":
    assert abs(float(metrics["loss/jsd"])
               - float(whole_batch_roll["loss/jsd"])) > 1e-4
  assert int(new_state.step) == 1


@pytest.mark.slow  # ~18 s; the 4-device test above checks the roll per shard
def test_step_on_one_device_rolls_the_whole_batch(tiny):
  """Also: the demo config keeps YNNPACK to reductions (configs/default.py),
  so no matrix product or convolution of the compiled step runs in it."""
  mesh = parallel.make_mesh(1)
  model, tx = cliplite.build(tiny), optim.build(tiny)
  state = state_lib.init_sharded(tiny, model, tx, mesh)
  batch = _random_batch(tiny, np.random.default_rng(0))
  outputs = _reference_outputs(model, state, batch)
  expected = losses.cliplite_objective(outputs, tiny.loss)[1]
  sharded = parallel.shard_batch(batch, mesh)
  step = train.make_train_step(tiny, model, tx, mesh).lower(
      state, sharded).compile()
  _, metrics = step(state, sharded)
  np.testing.assert_allclose(metrics["loss/jsd"], expected["loss/jsd"],
                             rtol=2e-5, atol=2e-6)
  # The session's compilation cache is on (conftest.py), so the option that
  # splits temporaries is left out.
  assert parallel.compiler_options(tiny) == {
      "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
  hlo = step.as_text()
  assert re.search(r" (dot|convolution)\(", hlo)
  assert _ynnpack_ops(hlo) == set()


# SigLIP's loss takes InfoNCE's global path (tested here in CI; its values
# in test_losses.py); its own run of this test is marked slow.
@pytest.mark.parametrize("loss", [
    "infonce", pytest.param("sigmoid", marks=pytest.mark.slow)])
def test_global_losses_are_the_same_on_four_devices_and_one(tiny, loss):
  """InfoNCE and SigLIP see the global batch: the 4-device train step's
  loss is the objective of the whole batch's forward pass on one device."""
  tiny.loss.name = loss
  mesh = parallel.make_mesh(4)
  model, tx = cliplite.build(tiny), optim.build(tiny)
  state = state_lib.init_sharded(tiny, model, tx, mesh)
  batch = _random_batch(tiny, np.random.default_rng(2))
  outputs = _reference_outputs(model, state, batch)
  expected = objectives.OBJECTIVES[loss].fn(outputs, tiny.loss)[1]
  step = train.make_train_step(tiny, model, tx, mesh)
  _, metrics = step(state, parallel.shard_batch(batch, mesh))
  for key in (f"loss/{loss}", "loss/total", "temperature"):
    np.testing.assert_allclose(metrics[key], expected[key], rtol=2e-5,
                               atol=2e-6, err_msg=key)
  for key in ("grad_norm", "lr/image", "lr/text", "lr/other"):
    assert key in metrics, key
  assert ("logit_bias" in metrics) == (loss == "sigmoid")
  # Per-device losses would differ: each device alone sees 4 of 16 rows.
  quarter = objectives.OBJECTIVES[loss].fn(_slice(outputs, 0, 4), tiny.loss)[1]
  assert abs(float(quarter["loss/total"]) - float(metrics["loss/total"])) > 1e-3


def test_one_row_per_device_is_refused_for_the_rolling_loss(tiny):
  tiny.batch_size = 4
  with pytest.raises(config_io.UserError, match="≥ 2 rows per device"):
    train.train_and_evaluate(tiny, "/nonexistent/never/written")
  tiny.batch_size, tiny.accum_steps = 32, 8  # 1 row per micro-batch
  with pytest.raises(config_io.UserError, match="gives 1"):
    train.train_and_evaluate(tiny, "/nonexistent/never/written")
  tiny.loss.name, tiny.batch_size, tiny.accum_steps = "infonce", 4, 1
  validation.check_train(tiny, 4)  # the global losses need no neighbour


def test_grad_norm_is_the_norm_clipping_sees(tiny):
  """With the text tower frozen, grad_norm leaves its gradients out, as
  clip_by_global_norm does; checked against jax.grad on the host."""
  tiny.model.text.train_last_layers = 0
  mesh = parallel.make_mesh(1)
  model, tx = cliplite.build(tiny), optim.build(tiny)
  state = state_lib.init_sharded(tiny, model, tx, mesh)
  batch = _random_batch(tiny, np.random.default_rng(1))
  dropout_rng, prior_rng = jax.random.split(jax.random.fold_in(state.rng, 0))
  variables = jax.device_get(state.variables)

  def loss(params):
    outputs = model.apply(
        {"params": params, "batch_stats": variables["batch_stats"]},
        augment.normalize(batch["images"]), batch["input_ids"],
        batch["attention_mask"], train=True,
        rngs={"dropout": dropout_rng, "prior": prior_rng},
        mutable=["batch_stats"])[0]
    return losses.cliplite_objective(outputs, tiny.loss)[0]

  grads = jax.jit(jax.grad(loss))(variables["params"])
  squares = {name: sum(float(np.sum(np.square(g)))
                       for g in jax.tree.leaves(tree))
             for name, tree in grads.items()}
  text_squares = squares.pop(cliplite.TEXT_TOWER)
  assert text_squares > 0
  step = train.make_train_step(tiny, model, tx, mesh)
  _, metrics = step(state, parallel.shard_batch(batch, mesh))
  np.testing.assert_allclose(float(metrics["grad_norm"]),
                             np.sqrt(sum(squares.values())), rtol=1e-4)


def _final_params(workdir, config):
  from cliplite_jax.training import checkpoint
  mesh = parallel.make_mesh()
  model, tx = cliplite.build(config), optim.build(config)
  mngr = checkpoint.manager(workdir, config, read_only=True)
  state = checkpoint.restore(mngr, mngr.latest_step(),
                             state_lib.abstract_state(config, model, tx, mesh))
  return int(state.step), jax.device_get(state.params)


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return {r["step"]: r["loss/total"] for r in records if "loss/total" in r}


@pytest.mark.slow  # bit-exact resume is also covered by test_reliability
def test_resume_continues_at_the_right_step_with_the_same_params(tiny, tmp_path,
                                                                 capsys):
  tiny.eval.probes = ()
  straight = str(tmp_path / "straight")
  train.train_and_evaluate(tiny, straight)

  resumed = str(tmp_path / "resumed")
  train.train_and_evaluate(tiny, resumed)
  # As if the run had died right after its step-3 checkpoint.
  shutil.rmtree(os.path.join(resumed, "checkpoints", "6"))
  capsys.readouterr()
  train.train_and_evaluate(tiny, resumed)
  assert "resuming from step 3" in capsys.readouterr().out

  step_a, params_a = _final_params(straight, tiny)
  step_b, params_b = _final_params(resumed, tiny)
  assert step_a == step_b == 6
  jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
  # The resumed run logged steps 4–6 again, with the same losses.
  assert _losses(straight) == _losses(resumed)
  assert sorted(_losses(straight)) == list(range(1, 7))
  with open(os.path.join(straight, "config.json")) as f:
    assert json.load(f)["total_steps"] == 6


def test_cpu_compiler_options_default_to_none(tiny):
  """{} (or a config saved before the field existed) keeps XLA's defaults."""
  tiny.cpu_compiler_options = {}
  assert parallel.compiler_options(tiny) is None
  del tiny["cpu_compiler_options"]
  assert parallel.compiler_options(tiny) is None


@pytest.fixture
def no_compilation_cache():
  """JAX's persistent compilation cache off for one test, as far as
  `parallel.compiler_options` reads it (jax itself decides once a process
  whether to use the cache, so it still tries to store a split program)."""
  enabled = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    yield
  finally:
    jax.config.update("jax_enable_compilation_cache", enabled)


def test_split_temporaries_only_without_a_compilation_cache(
    tiny, no_compilation_cache):
  assert parallel.compiler_options(tiny) == {
      "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE",
      "xla_multiheap_size_constraint_per_heap": 16 << 20}


def _is_serialisable(compiled) -> bool:
  from jax.experimental import serialize_executable
  try:
    serialize_executable.serialize(compiled)
  except Exception as error:  # pylint: disable=broad-except
    assert "Multiple temp buffer allocations" in str(error)
    return False
  return True


@pytest.mark.slow  # CI time; a CPU compiler option's identity, kept in -m slow
@pytest.mark.filterwarnings(
    "ignore:Error writing persistent compilation cache entry")
def test_temporaries_in_small_blocks_change_no_bit_of_the_step(tiny):
  """The step with its temporaries split into 1 MiB blocks (so that the tiny
  step is split at all) trains exactly as the step with one block (the
  session's compilation cache leaves the option out)."""
  mesh = parallel.make_mesh(1)
  model, tx = cliplite.build(tiny), optim.build(tiny)
  batches = [parallel.shard_batch(_random_batch(tiny, np.random.default_rng(i)),
                                  mesh) for i in range(2)]
  lowered = train.make_train_step(tiny, model, tx, mesh).lower(
      state_lib.abstract_state(tiny, model, tx, mesh), batches[0])
  one_block = lowered.compile()
  split = lowered.compile(compiler_options=dict(
      tiny.cpu_compiler_options, xla_multiheap_size_constraint_per_heap=1 << 20))
  # Only the split program is refused by the cache's serialiser.
  assert _is_serialisable(one_block) and not _is_serialisable(split)
  params = []
  for step in (one_block, split):
    trained = state_lib.init_sharded(tiny, model, tx, mesh)  # steps donate it
    for batch in batches:
      trained, _ = step(trained, batch)
    params.append(jax.device_get(trained.params))
  jax.tree.map(np.testing.assert_array_equal, *params)


def test_weight_norms_stay_finite_where_a_sum_of_squares_overflows():
  import jax.numpy as jnp
  huge = {"a": jnp.full((3,), 1e30, jnp.float32), "b": jnp.zeros((2, 2))}
  assert np.isinf(float(jnp.sqrt(sum(jnp.sum(x ** 2)
                                     for x in jax.tree.leaves(huge)))))
  np.testing.assert_allclose(float(train._scaled_norm(huge)),
                             np.sqrt(3) * 1e30, rtol=1e-6)
  plain = {"a": jnp.arange(5.0), "b": -jnp.ones((2,))}
  np.testing.assert_allclose(float(train._scaled_norm(plain)),
                             np.sqrt(30 + 2), rtol=1e-6)
  assert float(train._scaled_norm({"a": jnp.zeros(3)})) == 0.0


def _prepare_photos(raw: str, out: str, drop: str | None = None) -> dict:
  """The photo caption set (train 9, test 3) prepared at `out`, without
  the photo `drop`."""
  import photos
  captions = photos.write_jsonl(raw)
  if drop:
    with open(captions) as f:
      lines = [line for line in f if f"img/{drop}.jpg" not in line]
    with open(captions, "w") as f:
      f.writelines(lines)
  return prepare.run(prepare.Options(source=[captions], out=out))


def test_resuming_on_a_re_prepared_dataset_is_refused(tiny, tmp_path, capsys):
  data = str(tmp_path / "my_photos")
  _prepare_photos(str(tmp_path / "raw"), data)
  tiny.data.name = data
  tiny.batch_size = 8
  tiny.total_steps = tiny.checkpoint_every_steps = 2
  tiny.optim.warmup_steps = 1
  tiny.eval.probes = ()
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny, workdir)
  recorded = json.load(open(os.path.join(workdir, run_start.IDENTITY_FILE)))
  assert recorded["name"] == data and recorded["examples"] == {"train": 9,
                                                               "test": 3}
  # Prepared again at the same path, from an edited captions file.
  shutil.rmtree(data)
  _prepare_photos(str(tmp_path / "raw2"), data, drop="coffee")
  before = {name: os.path.getmtime(os.path.join(workdir, name))
            for name in os.listdir(workdir)}
  tiny.total_steps = 4
  with pytest.raises(config_io.UserError) as error:
    train.train_and_evaluate(tiny, workdir)
  message = str(error.value)
  assert message.startswith(f"data.name {data} was prepared again since this "
                            f"run started (train 9 → 8 examples, prepared ")
  assert "put back the set this run trained on" in message
  assert "--allow_config_change" in message and "\n" not in message
  assert {name: os.path.getmtime(os.path.join(workdir, name))
          for name in os.listdir(workdir)} == before
  # Deliberately: continued on the new set, which is then the one recorded.
  capsys.readouterr()
  train.train_and_evaluate(tiny, workdir, allow_config_change=True)
  assert "continuing on it (--allow_config_change)" in capsys.readouterr().out
  recorded = json.load(open(os.path.join(workdir, run_start.IDENTITY_FILE)))
  assert recorded["examples"] == {"train": 8, "test": 3}
  assert run_start.check_dataset_identity(tiny, workdir, False) == recorded
