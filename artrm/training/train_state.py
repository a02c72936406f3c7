"""The train state, stacked over seeds: its fresh init, optimizer and EMA.

Seed i's slice of a stacked state is bitwise the state one seed alone would
get, so several seeds train as one vmapped program.
"""

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from artrm import one_off
from artrm.models import fresh_params
from artrm.models.recipe import Recipe


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # raw key data (uint32): saved by Orbax like any array
  ema_params: Any = None  # recipe.ema_decay > 0: the weights evaluation uses


def ema_update(ema_params, params, decay: float):
  """TRM's EMA of the weights, after every optimizer step."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def eval_params(state: TrainState):
  """The weights evaluation and the best checkpoint score: the EMA when the recipe keeps one."""
  return state.params if state.ema_params is None else state.ema_params


EMBEDDINGS = ('tok_emb', 'pos_emb', 'abacus_emb')  # the params that make the input x


def learning_rate(opt: ml_collections.ConfigDict, total_steps: int):
  """The paper's constant lr, or a linear warmup then a cosine decay to 0 at `total_steps`."""
  if opt.get('schedule', 'constant') == 'constant':  # configs saved before schedules had none
    return opt.learning_rate
  return optax.warmup_cosine_decay_schedule(
    0.0, opt.learning_rate, opt.warmup_steps, max(total_steps, opt.warmup_steps + 1)
  )


def make_optimizer(
  opt: ml_collections.ConfigDict, recipe: Recipe | None = None, total_steps: int = 0
) -> optax.GradientTransformation:
  """AdamW as torch.optim.AdamW: decoupled decay lr * wd * param on every parameter
  (but fixed y0 / z0, which `recipe.fixed_init` keeps out of the optimizer). A schedule
  spans the run's optimizer updates: `total_steps` training steps, times `recipe.n_sup`
  where each supervision pass makes one.

  `opt.embed_lr_mult` scales the embeddings' whole update (Adam step and decay):
  the step size of the input alone, everything else as it was."""
  if recipe is not None:
    total_steps *= recipe.updates_per_batch  # the schedule counts optimizer updates
  tx = optax.adamw(
    learning_rate(opt, total_steps),
    b1=opt.b1,
    b2=opt.b2,
    eps=opt.eps,
    weight_decay=opt.weight_decay,
  )
  if opt.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  if opt.get('embed_lr_mult', 1.0) != 1.0:
    embeddings = lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: path[0].key in EMBEDDINGS, params
    )
    tx = optax.chain(tx, optax.masked(optax.scale(opt.embed_lr_mult), embeddings))
  if recipe is not None and recipe.fixed_init:
    learned = lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: path[0].key not in ('y_init', 'z_init'), params
    )
    tx = optax.masked(tx, learned)  # masked-out updates pass through: their gradient is 0
  return tx


def fresh_state(model, optimizer: optax.GradientTransformation, seed: jax.Array) -> TrainState:
  """One seed's state; its params depend on `seed` alone. Call it under jit (`init_state`)."""
  init_key, train_key = jax.random.split(jax.random.key(seed))
  params = fresh_params(model, init_key)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=optimizer.init(params),
    rng=jax.random.key_data(train_key),
    ema_params=params if model.recipe.ema_decay > 0 else None,
  )


def init_state(model, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
  """`fresh_state` as a one-off program (`artrm.one_off`)."""
  return one_off.jit(functools.partial(fresh_state, model, optimizer))(jnp.int32(seed))


def seeds_of(config: ml_collections.ConfigDict) -> list[int]:
  return [config.seed + i for i in range(config.num_seeds)]


def init_seeds(model, optimizer: optax.GradientTransformation, seeds: list[int]) -> TrainState:
  """States of several seeds stacked on a leading axis: the loop vmaps over it.

  Seed i's slice is bitwise the state `init_state(..., seeds[i])` would give.
  """
  return one_off.jit(stacked_states(model, optimizer))(jnp.asarray(seeds, jnp.int32))


def seeds_shape(model, optimizer: optax.GradientTransformation, seeds: list[int]) -> TrainState:
  """The shapes of `init_seeds`'s state, computing nothing."""
  return jax.eval_shape(stacked_states(model, optimizer), jnp.asarray(seeds, jnp.int32))


def stacked_states(model, optimizer: optax.GradientTransformation):
  """`fresh_state` vmapped over an array of seeds, to be jitted (`init_seeds`)."""
  return jax.vmap(functools.partial(fresh_state, model, optimizer))


def abstract_state(model, saved: dict, sharding) -> TrainState:
  """The shapes (placed on `sharding`) of the state a checkpoint saved with config `saved` holds."""
  c = ml_collections.ConfigDict(saved)
  optimizer = make_optimizer(c.optimizer, model.recipe, c.max_steps)
  abstract = seeds_shape(model, optimizer, seeds_of(c))
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)


SEED_AXIS = 'seeds'


def over_seeds(fn, num_seeds: int):
  """`fn` on arguments stacked over seeds (or the members of a stack of runs).

  Several are vmapped over `SEED_AXIS`; a model built with that `seed_axis`
  then skips the steps of ACT / TRM once every member has halted. One is
  squeezed and run unbatched.
  """
  if num_seeds > 1:
    return jax.vmap(fn, axis_name=SEED_AXIS)
  expand = lambda tree: jax.tree.map(lambda x: x[None], tree)
  return lambda *args: expand(fn(*seed_slice(args, 0)))


@functools.partial(jax.jit, static_argnums=1)
def seed_slice(tree, i: int):
  return jax.tree.map(lambda x: x[i], tree)
