"""The train state and how to create it (concretely or abstractly, sharded)."""
from __future__ import annotations

from typing import Any

import flax.core
import flax.struct
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from cliplite_jax import config_io, objectives
from cliplite_jax.objectives import clusters
from cliplite_jax.models import cliplite, hf_bert, multimodal, released, text
from cliplite_jax.training import optim, parallel


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue bit for bit.

  step: int32 [] (updates done); params: model params, as
  `optax.LookaheadParams` (fast, slow) when Lookahead is on; batch_stats:
  BatchNorm running statistics; opt_state: optax state; rng: the base key,
  folded with `step` to give each step's keys; ema: with `optim.ema_decay`
  > 0, the exponential moving average of the model's variables
  ({"params", "batch_stats"}, float32), else None; centroids: with
  `loss.negatives="clusters"`, the caption clusters' centroids float32 [k,
  D] (`objectives.clusters`), else None.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  ema: Any = None
  centroids: Any = None

  @property
  def model_params(self):
    """The parameters the model runs with (Lookahead's fast weights)."""
    return optim.model_params(self.params)

  @property
  def trained_variables(self) -> dict:
    """Flax variables for `model.apply`: the weights being trained."""
    return {"params": self.model_params, "batch_stats": self.batch_stats}

  @property
  def variables(self) -> dict:
    """The variables a trained model is used with (evaluated, embedded,
    exported): their EMA when the run keeps one, else `trained_variables`."""
    return self.ema if self.ema is not None else self.trained_variables


def build_model(config: ml_collections.ConfigDict):
  """The model `config.model` describes: `MultiModal` when it names
  modalities, else the two-tower `CLIPLite`."""
  if multimodal.is_multimodal(config):
    return multimodal.build(config)
  return cliplite.build(config)


def dummy_inputs(config: ml_collections.ConfigDict, batch: int = 2):
  """The model's positional inputs for `init`: (images float32 [b, S, S, 3],
  ids int32 [b, L], mask int32 [b, L]), or for a `MultiModal` model
  (`multimodal.dummy_inputs`,)."""
  if multimodal.is_multimodal(config):
    return (multimodal.dummy_inputs(config, batch),)
  size, length = config.data.image_size, config.data.max_tokens
  return (jnp.zeros((batch, size, size, 3), jnp.float32),
          jnp.zeros((batch, length), jnp.int32),
          jnp.ones((batch, length), jnp.int32))


def create_train_state(config: ml_collections.ConfigDict, model,
                       tx: optax.GradientTransformation, rng: jax.Array,
                       loaded: dict | None = None) -> TrainState:
  """Initialises parameters, BatchNorm statistics and the optimiser state;
  `loaded` {"params"/"batch_stats": {top-level name: subtree}}
  (`read_initial`: pretrained towers, released heads and logit
  scale) replace those subtrees."""
  variables, state_rng = _fresh_variables(config, model, rng, loaded)
  params = optim.init_params(config, variables["params"])
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables["batch_stats"],
                    opt_state=tx.init(params), rng=state_rng,
                    ema=(jax.tree.map(jnp.copy, variables)
                         if optim.ema_decay(config) else None),
                    centroids=_no_centroids(config))


def _no_centroids(config: ml_collections.ConfigDict):
  """Cluster negatives' centroids before the first k-means (zeros
  [k, model.proj_dim]), or None without them."""
  cluster = clusters.settings(config.loss)
  if cluster is None:
    return None
  return jnp.zeros((cluster["k"], config.model.proj_dim), jnp.float32)


def _fresh_variables(config, model, rng, loaded):
  """({"params", "batch_stats"} at init with `loaded`'s subtrees, the key
  left for the train state)."""
  init_rng, prior_rng, dropout_rng, state_rng = jax.random.split(rng, 4)
  variables = model.init(
      {"params": init_rng, "prior": prior_rng, "dropout": dropout_rng},
      *dummy_inputs(config), train=False)
  out = {"params": dict(variables["params"]),
         "batch_stats": dict(variables.get("batch_stats", {}))}
  for collection, subtrees in (loaded or {}).items():
    for name, subtree in subtrees.items():
      _check_loaded(name, out[collection][name], subtree)
      out[collection][name] = jax.tree.map(jnp.asarray, subtree)
  return out, state_rng


def initial_variables(config: ml_collections.ConfigDict, model,
                      mesh: Mesh, loaded: dict) -> dict:
  """The variables {"params", "batch_stats"} a fresh run of `config` starts
  with (those of `init_sharded`'s state, `loaded` from `checked_initial`),
  without an optimiser state: for scoring a released model. Replicated on
  `mesh`."""
  create = jax.jit(
      lambda rng, loaded: _fresh_variables(config, model, rng, loaded)[0],
      out_shardings=parallel.replicated(mesh))
  rng = jax.random.key(config.seed)
  return create.lower(rng, loaded).compile(_init_options())(rng, loaded)


def _init_options() -> dict:
  if jax.default_backend() != "cpu":
    return {}
  # LLVM spends ~20 s optimising one threefry expansion per parameter, code
  # that runs once; unoptimised it compiles in ~5 s (values differ from the
  # optimised build's by an ulp at most, the same on every run).
  return {"xla_backend_optimization_level": 0}


def _check_loaded(name: str, fresh, loaded) -> None:
  """ValueError unless `loaded` has `fresh`'s tensor names and shapes."""
  def flat(tree):
    if not isinstance(tree, (dict, flax.core.FrozenDict)):
      return {"": tree}  # a single tensor (log_scale)
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(
        flax.core.unfreeze(tree)).items()}
  fresh, loaded = flat(fresh), flat(loaded)
  if set(fresh) != set(loaded):
    raise ValueError(
        f"loaded {name} does not fit the model: missing "
        f"{sorted(set(fresh) - set(loaded))[:3]}, unexpected "
        f"{sorted(set(loaded) - set(fresh))[:3]}")
  for key, value in fresh.items():
    if tuple(value.shape) != tuple(loaded[key].shape):
      raise ValueError(f"loaded {name}/{key} is {list(loaded[key].shape)} "
                       f"where the model has {list(value.shape)}")


def read_initial(config: ml_collections.ConfigDict) -> dict:
  """The weights a fresh run starts from instead of random ones: the text
  tower of `model.text.pretrained` (BERT), and what `model.init_from` /
  `model.{image,text}.init_from` name (`released.initial_variables`).
  {"params": {top-level name: float32 numpy subtree}, "batch_stats": ...},
  both empty if none."""
  loaded = {"params": {}, "batch_stats": {}}
  path = (config.model.get("text") or {}).get("pretrained")
  if path:
    _, variables = text.load_pretrained(path,
                                        pooling=config.model.text.pooling)
    loaded["params"][cliplite.TEXT_TOWER] = variables["params"]
  if not multimodal.is_multimodal(config):
    has_bias = objectives.OBJECTIVES[config.loss.name].logit_bias
    for collection, subtrees in released.initial_variables(
        config, has_bias).items():
      loaded[collection].update(subtrees)
  return loaded


def checked_initial(config: ml_collections.ConfigDict, model) -> dict:
  """`read_initial`, checked to fit `model` (names and shapes, traced
  without compute): a release that cannot be read or does not fit is a
  UserError (one line), raised before a run writes anything."""
  try:
    loaded = read_initial(config)
    if any(loaded.values()):  # else nothing to check: skip the trace
      jax.eval_shape(
          lambda rng: _fresh_variables(config, model, rng, loaded),
          jax.random.key(0))
  except (hf_bert.PretrainedError, ValueError) as e:
    raise config_io.UserError(
        f"the initial weights: {str(e).splitlines()[0]}") from e
  return loaded


def init_sharded(config: ml_collections.ConfigDict, model, tx,
                 mesh: Mesh, pretrained: bool = True,
                 loaded: dict | None = None) -> TrainState:
  """`create_train_state` from `config.seed`, laid out on `mesh`
  (`parallel.state_shardings`), with `loaded` (`checked_initial`), or
  `read_initial`'s weights when `pretrained` and none are given."""
  if loaded is None:
    loaded = read_initial(config) if pretrained else {}
  create = jax.jit(
      lambda rng, loaded: create_train_state(config, model, tx, rng, loaded),
      out_shardings=state_shardings(config, model, tx, mesh))
  rng = jax.random.key(config.seed)
  return create.lower(rng, loaded).compile(_init_options())(rng, loaded)


def state_shardings(config: ml_collections.ConfigDict, model, tx,
                    mesh: Mesh) -> TrainState:
  """The train state's shardings on `mesh` (a TrainState of NamedSharding)."""
  shapes = jax.eval_shape(
      lambda rng: create_train_state(config, model, tx, rng),
      jax.random.key(config.seed))
  return parallel.state_shardings(shapes, mesh)


def abstract_state(config: ml_collections.ConfigDict, model, tx,
                   mesh: Mesh) -> TrainState:
  """Shapes, dtypes and shardings of the state on `mesh`, without compute."""
  shapes = jax.eval_shape(
      lambda rng: create_train_state(config, model, tx, rng),
      jax.random.key(config.seed))
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(
          s.shape, s.dtype, sharding=parallel.state_sharding(s.shape, mesh)),
      shapes)
