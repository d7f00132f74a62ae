"""The CLIP-Lite train step and training loop."""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from etils import epath
from jax.sharding import Mesh

from cliplite_jax import config_io, evaluate, objectives, run_dir, validation
from cliplite_jax.objectives import clusters
from cliplite_jax.data import (augment, mixture, pipeline, sources,
                               vocabulary)
from cliplite_jax.models import hf_bert, multimodal, released
from cliplite_jax.probes import evaluated, suite
from cliplite_jax.training import (accumulate, checkpoint, checkpoint_saver,
                                   guards, metrics as metrics_lib, optim,
                                   parallel, prng, recovery, run_start,
                                   state as state_lib, summary, workdir_lock)


def make_objective(config: ml_collections.ConfigDict, mesh: Mesh):
  """outputs → (loss, metrics) for `config.loss.name`.

  Device-local objectives (JSD) run per shard through `parallel.device_local`;
  the others see the global batch, gathered or (`loss.gather="ring"`) passed
  round the devices.
  """
  objective = objectives.OBJECTIVES[config.loss.name]
  fn = functools.partial(objective.fn, cfg=config.loss)
  if objectives.by_ring(config.loss):
    fn = functools.partial(fn, ring_mesh=mesh)
  if not objective.device_local:
    return fn
  if objective.takes_axis:
    fn = functools.partial(fn, axis_name=parallel.BATCH)
  return parallel.device_local(fn, mesh)


def step_rngs(rng: jax.Array, step: jax.Array, micro: int | None = None):
  """The (dropout, prior) keys of `step` (and of micro-batch `micro` when
  the step accumulates several).

  They draw threefry's bits in one fused loop (`prng.with_unrolled_bits`):
  the same masks and noise as plain threefry keys, faster on CPU.
  """
  key = jax.random.fold_in(rng, step)
  if micro is not None:
    key = jax.random.fold_in(key, micro)
  return tuple(prng.with_unrolled_bits(jax.random.split(key)))


def make_train_step(config: ml_collections.ConfigDict, model, tx, mesh: Mesh):
  """A jitted `(state, batch) -> (state, metrics)` over `mesh`.

  batch: "images" uint8 [B, S, S, 3], "input_ids" / "attention_mask" int32
  [B, L] (a `MultiModal` model: float32 [B, d_m] per modality), optionally
  "skipped" int32 [B] and "color_jitter" float32 [B, 4] with "color_order"
  int32 [B, 4] (colour jitter applied here, before the images are
  normalised), sharded over the devices. The
  state is laid out by `parallel.state_shardings` and donated. BatchNorm
  statistics are over the global (micro-)batch (SyncBN semantics).

  With `config.accum_steps` = M > 1, each device's rows are split into M
  micro-batches (`parallel.split_micro_batches`), BatchNorm statistics are
  updated after each one in turn, and the optimiser steps once. A
  device-local objective (the JSD roll) is computed per micro-batch and
  the gradients averaged; a global one (InfoNCE, SigLIP, ...) over the whole
  batch from cached micro-batch embeddings (`accumulate.feature_cached`), so
  every row is every other's negative. Metrics are float32 scalars (loss
  terms averaged over micro-batches when per micro-batch): the loss terms,
  temperature, grad_norm (of the gradients clipping sees: frozen parameters
  left out), l2_params and l2_updates (the global norms of the weights the model runs with and of
  this step's change to them), lr/<group> and data/skipped (examples
  dropped while assembling this global batch).
  """
  objective = make_objective(config, mesh)
  needs_key = objectives.OBJECTIVES[config.loss.name].needs_key
  device_local = objectives.OBJECTIVES[config.loss.name].device_local
  schedules = optim.schedules(config)
  ema_decay = optim.ema_decay(config)
  cluster = clusters.settings(config.loss)  # None: rolled negatives
  num_micro = config.get("accum_steps", 1)
  is_multimodal = multimodal.is_multimodal(config)
  # The second views of CLIP-Lite's image–image and text–text terms ride
  # in the batch as "*_aug" (data.pipeline.TrainTransform).
  input_keys = (multimodal.input_keys(config) if is_multimodal else tuple(
      k + suffix for suffix in ("", "_aug")
      for k in ("images", "input_ids", "attention_mask")))
  pixels = None if is_multimodal else augment.pixel_stats(config)
  source_names = [sources.display_name(name)
                  for name, _ in mixture.sources_of(config)]

  def model_inputs(batch):
    """The model's positional and keyword arguments of one batch."""
    if is_multimodal:
      return (batch,), {}
    second = {}
    if "images_aug" in batch:
      second["images_aug"] = augment.normalize(batch["images_aug"], pixels)
    if "input_ids_aug" in batch:
      second.update(input_ids_aug=batch["input_ids_aug"],
                    attention_mask_aug=batch["attention_mask_aug"])
    return (augment.normalize(batch["images"], pixels), batch["input_ids"],
            batch["attention_mask"]), second

  def forward(params, batch_stats, batch, rngs):
    """Model outputs and new BatchNorm statistics of one (micro-)batch."""
    dropout_rng, prior_rng = rngs
    args, second_views = model_inputs(batch)
    outputs, updates = model.apply(
        {"params": params, "batch_stats": batch_stats},
        *args, **second_views, train=True,
        rngs={"dropout": dropout_rng, "prior": prior_rng},
        mutable=["batch_stats"])
    return outputs, updates.get("batch_stats", batch_stats)

  def step_fn(state: state_lib.TrainState, batch):
    inputs = {k: batch[k] for k in input_keys if k in batch}
    for suffix in ("", "_aug"):
      if f"color_jitter{suffix}" in batch:  # drawn on the host, applied here
        inputs[f"images{suffix}"] = augment.apply_color_jitter(
            batch[f"images{suffix}"], batch[f"color_jitter{suffix}"],
            batch[f"color_order{suffix}"])
    step_objective = objective
    key = objectives.loss_key(step_rngs(state.rng, state.step)[1])
    if needs_key:  # one key per step, however it is accumulated
      step_objective = lambda outputs: objective(  # noqa: E731
          dict(outputs, loss_key=key))
    if cluster is not None:  # the clusters' state goes in whole
      shared = clusters.step_inputs(state.centroids, state.step, cluster, key)
      step_objective = lambda outputs: objective(dict(  # noqa: E731
          outputs, **{parallel.REPLICATED: {
              **outputs.get(parallel.REPLICATED, {}), **shared}}))
    if num_micro == 1:
      def loss_fn(params):
        outputs, batch_stats = forward(params, state.batch_stats, inputs,
                                       step_rngs(state.rng, state.step))
        loss, metrics = step_objective(outputs)
        return loss, (metrics, batch_stats, outputs.get("txt_emb"))

      grads, (metrics, batch_stats, txt_emb) = jax.grad(
          loss_fn, has_aux=True)(state.model_params)
    else:
      micro_batches = jax.tree.map(
          lambda x: parallel.split_micro_batches(x, num_micro, mesh), inputs)

      def micro_forward(params, batch_stats, micro_batch, index):
        return forward(params, batch_stats, micro_batch,
                       step_rngs(state.rng, state.step, index))

      if device_local:
        grads, metrics, batch_stats = accumulate.per_micro_batch(
            micro_forward, step_objective, state.model_params,
            state.batch_stats, micro_batches, num_micro)
      else:
        grads, metrics, batch_stats = accumulate.feature_cached(
            micro_forward, step_objective, state.model_params,
            state.batch_stats, micro_batches, num_micro, mesh)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optim.clipped_norm(config, grads)
    # The weights the model runs with, and how far this step moved them.
    weights = optim.model_params(params)
    metrics["l2_params"] = _scaled_norm(weights)
    metrics["l2_updates"] = _scaled_norm(jax.tree.map(
        jnp.subtract, weights, state.model_params))
    if "skipped" in batch:
      metrics["data/skipped"] = jnp.sum(batch["skipped"]).astype(jnp.float32)
    if "source" in batch:  # a mixture: the share of the batch each gave
      for position, name in enumerate(source_names):
        metrics[f"data/source/{name}"] = jnp.mean(
            (batch["source"] == position).astype(jnp.float32))
    metrics.update({f"lr/{g}": s(state.step) for g, s in schedules.items()})
    new_state = state.replace(step=state.step + 1, params=params,
                              batch_stats=batch_stats, opt_state=opt_state)
    if state.ema is not None:
      new_state = new_state.replace(ema=optim.ema_update(
          state.ema, new_state.trained_variables, ema_decay))
    if cluster is not None:
      new_state = new_state.replace(centroids=clusters.refreshed(
          state.centroids, txt_emb, state.step, cluster,
          jax.random.fold_in(key, 1)))
    return new_state, metrics

  state_shardings = state_lib.state_shardings(config, model, tx, mesh)
  return jax.jit(step_fn,
                 in_shardings=(state_shardings, parallel.batch_sharded(mesh)),
                 out_shardings=(state_shardings, parallel.replicated(mesh)),
                 donate_argnums=0,
                 compiler_options=parallel.compiler_options(config))


def _scaled_norm(tree) -> jax.Array:
  """The global L2 norm of `tree`, float32 [], computed on the tree divided
  by its largest magnitude: finite whenever the leaves are (a plain sum of
  squares overflows float32 from 1.8e19)."""
  scale = jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in
                             jax.tree.leaves(tree)])).astype(jnp.float32)
  safe = jnp.where(scale > 0, scale, 1.0)
  return safe * optax.global_norm(jax.tree.map(lambda x: x / safe, tree))


def _adopt_pretrained_text(config: ml_collections.ConfigDict) -> None:
  """With `model.text.pretrained`, takes the text architecture (and, unless
  another tokenizer is named, the tokenizer) from that checkpoint, so the
  saved config.json describes the model that is trained."""
  path = (config.model.get("text") or {}).get("pretrained")
  if not path:
    return
  try:
    fields = hf_bert.encoder_fields(hf_bert.read_config(path))
  except hf_bert.PretrainedError as e:
    raise config_io.UserError(f"model.text.pretrained: {e}") from e
  fixed = (fields.pop("type_vocab_size"), fields.pop("layer_norm_eps"))
  if fixed != (2, 1e-12):
    raise config_io.UserError(
        f"model.text.pretrained: {path} has type_vocab_size, layer_norm_eps = "
        f"{fixed}; the config supports BERT's (2, 1e-12) only")
  del fields["dropout"]  # a training choice: the config's stays
  config.model.text.update(fields)
  if config.data.tokenizer in vocabulary.TRAINED:
    config.data.tokenizer = path
  print(f"text tower from {path}: {fields['layers']} layers, hidden "
        f"{fields['hidden']}, vocabulary {fields['vocab_size']}", flush=True)


def make_mesh(config: ml_collections.ConfigDict) -> Mesh:
  """Every visible device, `config.mesh.fsdp` of them along `fsdp`."""
  try:
    return parallel.make_mesh(fsdp=config.get("mesh", {}).get("fsdp", 1))
  except ValueError as e:
    raise config_io.UserError(str(e)) from e


def _validate(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
  validation.check_train(config, mesh.devices.size)
  evaluated.check_evaluation(config)


def _evaluate_and_log(config, model, state, tokenizer, mesh, workdir, writer,
                      step, final: bool = True) -> dict[str, float]:
  if not final and config.eval.get("suite"):
    # A benchmark suite is scored once, at the end.
    config = ml_collections.ConfigDict(config.to_dict())
    config.eval.suite = ""
  # The probes run data-parallel on replicated weights (fsdp shards them).
  variables = jax.device_put(state.variables, parallel.replicated(mesh))
  results = evaluate.run_probes(config, model, variables, tokenizer, mesh)
  writer.write(step, results)
  evaluate.write_results(workdir, step, results)
  if jax.process_index() == 0:
    suite.write_markdown(workdir, step, config, results)
  if jax.process_index() == 0:
    print(evaluate.format_table(step, results), flush=True)
  return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_config_change: bool = False) -> dict[str, float]:
  """Trains (resuming from WORKDIR's latest checkpoint), then evaluates.

  Everything is checked before WORKDIR is touched. SIGTERM saves a checkpoint
  at the current step and returns early (empty results); a non-finite loss or
  gradient norm raises guards.NonFiniteError without saving. Returns the
  final evaluation metrics (empty when `config.eval.probes` is).
  """
  config_io.check_workdir(workdir)
  sources.canonical_datasets(config)
  mesh = make_mesh(config)
  _adopt_pretrained_text(config)
  for line in released.adopt(config):
    if jax.process_index() == 0:
      print(line, flush=True)
  _validate(config, mesh)
  data_check = run_start.check_data(config)
  num_examples = data_check.num_examples
  guards.check_config_change(config, workdir, allow_config_change)
  identity = run_start.check_dataset_identity(config, workdir,
                                              allow_config_change)
  model = state_lib.build_model(config)
  # A fresh run reads its initial weights (a released model's, BERT's)
  # before WORKDIR is touched: a bad release leaves nothing behind.
  loaded = (None if run_dir.has_checkpoint(workdir)
            else state_lib.checked_initial(config, model))
  fresh_tokenizer = None
  has_text = multimodal.has_text(config)
  if has_text and not (epath.Path(workdir) / "tokenizer.json").exists():
    fresh_tokenizer = vocabulary.new_tokenizer(config)  # checked, not written
  config_io.make_workdir(workdir)
  # Held until return: a second run on WORKDIR is refused before it writes.
  lock = workdir_lock.acquire(workdir)
  tokenizer = None
  if fresh_tokenizer is not None:
    tokenizer = vocabulary.save_tokenizer(fresh_tokenizer, config, workdir)
  elif has_text:
    tokenizer = vocabulary.workdir_tokenizer(config, workdir)
  tx = optim.build(config)
  data_iter = iter(pipeline.train_dataset(
      config, tokenizer, jax.process_index(), jax.process_count()))
  mngr = checkpoint.manager(workdir, config)
  last_saved = mngr.latest_step()
  state = state_lib.init_sharded(config, model, tx, mesh,
                                 loaded=loaded if last_saved is None else {})
  if last_saved is not None:
    # The newest intact step: damaged ones are named and set aside.
    last_saved, state = recovery.restore_intact(mngr, state, data_iter,
                                                config.batch_size)
    logging.info("resumed from step %d", int(state.step))
    print(f"resuming from step {int(state.step)}", flush=True)
  if jax.process_index() == 0 and last_saved is not None:
    run_start.say_what_resuming_changes(config, workdir, int(state.step),
                                        mngr.all_steps())
  train_step = make_train_step(config, model, tx, mesh)
  first_step = int(state.step)
  writer = metrics_lib.MetricWriter(workdir, resume_step=first_step)
  lines = summary.startup_lines(
      config, optim.model_params(state.params), mesh, workdir,
      first_step if last_saved is not None else None, num_examples)
  lines += [line for line in (data_check.mixture_line,
                              data_check.rewrites_line) if line]
  writer.write_text(first_step, "run", "\n\n".join(lines))
  if jax.process_index() == 0:
    print("\n".join(lines), flush=True)
  epoch_size = summary.epoch_examples(num_examples, config)
  core_hours = metrics_lib.last_record(workdir, first_step).get(
      "core_hours", 0.0) if jax.process_index() == 0 else 0.0
  progress = metrics_lib.Progress(first_step, config.total_steps,
                                  config.batch_size)
  nonfinite = guards.NonFiniteGuard()
  saver = checkpoint_saver.OverlappedSaver(mngr, config, nonfinite,
                                           last_saved)
  skipped = 0.0  # data/skipped is logged as the sum since the last log line
  # config.json and the dataset's identity are written once the first step
  # has run: a run that fails at start-up (restore, compilation, the first
  # batch) leaves what the next resume compares against as it was.
  recorded = False
  try:
    with guards.PreemptionSignal() as preemption:
      for step in range(first_step + 1, config.total_steps + 1):
        waiting = time.perf_counter()
        batch = parallel.shard_batch(next(data_iter), mesh)
        progress.waited(time.perf_counter() - waiting)
        state, step_metrics = train_step(state, batch)
        if not recorded:
          jax.block_until_ready(step_metrics)
          run_start.record_start(config, workdir, identity)
          recorded = True
        nonfinite.update(step, step_metrics)
        saver.flush()  # the previous step's checkpoint, while this step runs
        skipped = skipped + step_metrics["data/skipped"]
        if step % config.log_every_steps == 0 or step == config.total_steps:
          nonfinite.check(saver.last_saved)
          step_metrics["data/skipped"] = skipped
          logged = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
          skipped = 0.0
          timing = progress.update(step)
          core_hours += timing["elapsed_s"] * mesh.devices.size / 3600
          logged.update({
              "img_per_s": timing["img_per_s"],
              "img_per_s_per_device": timing["img_per_s"] / mesh.devices.size,
              "data/wait_frac": timing["data_wait_frac"],
              "examples_seen": float(step * config.batch_size),
              "epoch": step * config.batch_size / epoch_size,
              "core_hours": core_hours})
          writer.write(step, logged)
          if jax.process_index() == 0:
            print(metrics_lib.progress_line(step, config.total_steps, logged,
                                            timing["eta_s"]), flush=True)
        stop = preemption.requested(step)
        if (step % config.checkpoint_every_steps == 0
            or step == config.total_steps or stop):
          saver.stage(step, state, data_iter)
        if stop:
          saver.flush()
          saver.wait()
          print(f"preempted: saved a checkpoint at step {step}; run the same "
                f"command to resume", flush=True)
          return {}
        if (config.eval.every_steps and step % config.eval.every_steps == 0
            and step != config.total_steps):
          saver.flush()
          _evaluate_and_log(config, model, state, tokenizer, mesh, workdir,
                            writer, step, final=False)
    saver.flush()
    if not recorded:  # a finished run, resumed to evaluate again
      run_start.record_start(config, workdir, identity)
    results = {}
    if config.eval.probes:
      results = _evaluate_and_log(config, model, state, tokenizer, mesh,
                                  workdir, writer, int(state.step))
  finally:
    saver.close()  # a save in flight completes intact
    writer.close()
    mngr.close()
    lock.release()
  return results
