"""The loss and the step: one batch of supervision passes, as a pure function of the state.

`train_step` is module-level; the loop jits it once (batch sharded over a data
mesh, state replicated and donated). Batches are sampled inside the step from
`fold_in(run key, step)`, so a run is a pure function of (config, step):
resuming from a checkpoint replays the exact same batches and dropout masks,
and the result is bitwise identical to an uninterrupted run.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax

from artrm import parallel
from artrm.data import IGNORE_INDEX, same_layout, sample_batch_of
from artrm.models import ModelConfig
from artrm.training.train_state import SEED_AXIS, TrainState, ema_update, over_seeds


def cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
  """Mean over targets that are not IGNORE_INDEX (torch's ignore_index rule)."""
  mask_BxT = targets_BxT != IGNORE_INDEX
  nll_BxT = optax.softmax_cross_entropy_with_integer_labels(
    logits_BxTxV.astype(jnp.float32), jnp.where(mask_BxT, targets_BxT, 0)
  )
  return jnp.sum(nll_BxT * mask_BxT) / jnp.maximum(jnp.sum(mask_BxT), 1)


def lm_loss(
  config: ModelConfig, logits_BxTxV: jax.Array, aux: dict, targets_BxT: jax.Array
) -> jax.Array:
  """The paper's objective: next-token cross entropy plus the ACT ponder cost."""
  loss = cross_entropy(logits_BxTxV, targets_BxT)
  if 'ponder_cost' in aux:
    loss = loss + config.ponder_cost_weight * aux['ponder_cost']
  return loss


def halt_loss(halt: dict, targets_BxT: jax.Array, target: str) -> jax.Array:
  """TRM's Q-head loss: BCE of each step's q against "this step's prediction is right".

  'token' (default): the argmax at the position is its target. That is what a
  halting decision can change while decoding, one new token at a time.
  'sequence': every answer token up to and including the position is right
  (TRM's "the answer is exactly right", made causal). Means over the answer
  positions of every step. The q's input is not detached: the loss also
  shapes the trunk, as in TRM.
  """
  mask_BxT = targets_BxT != IGNORE_INDEX
  right_SxBxT = jnp.argmax(halt['logits_SxBxTxV'], axis=-1) == targets_BxT
  if target == 'sequence':
    right_SxBxT = jnp.cumprod(right_SxBxT | ~mask_BxT, axis=-1).astype(bool)
  bce_SxBxT = optax.sigmoid_binary_cross_entropy(
    halt['q_SxBxT'].astype(jnp.float32), right_SxBxT.astype(jnp.float32)
  )
  mask_SxBxT = jnp.broadcast_to(mask_BxT, bce_SxBxT.shape)
  return jnp.sum(bce_SxBxT * mask_SxBxT) / jnp.maximum(jnp.sum(mask_SxBxT), 1)


def objective(model, logits_BxTxV: jax.Array, aux: dict, targets_BxT: jax.Array) -> jax.Array:
  """The loss of one supervision pass: the paper's, plus the recipe's halting loss."""
  loss = lm_loss(model.config, logits_BxTxV, aux, targets_BxT)
  if model.recipe.trains_halting:
    loss = loss + model.recipe.halt_loss_weight * halt_loss(
      aux['halt'], targets_BxT, model.recipe.halt_target
    )
  return loss


def train_step(
  state: TrainState,
  *,
  model,
  optimizer,
  tasks: tuple[str, ...],
  task_index: jax.Array,
  length: int,
  batch_size: int,
  min_length: int = 0,
  seq_len: int | None = None,
  batch_sharding=None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One batch of `tasks[task_index]` (`data.sample_batch_of`): `recipe.n_sup` supervision
  passes over it (`supervision_passes`), then step + 1."""
  step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  data_key, dropout_key = jax.random.split(step_key)
  batch = sample_batch_of(data_key, tasks, task_index, length, batch_size, min_length, seq_len)
  if batch_sharding is not None:
    batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
  state, metrics = supervision_passes(state, batch, dropout_key, model, optimizer)
  return state.replace(step=state.step + 1), metrics


def supervision_passes(
  state: TrainState, batch: dict, dropout_key: jax.Array, model, optimizer
) -> tuple[TrainState, dict[str, jax.Array]]:
  """`recipe.n_sup` passes over `batch`, and the batch's metrics.

  Each pass starts from the detached (y, z) the last one ended with and ends
  in a loss; with sup_update 'each' every pass makes an optimizer step, with
  'accumulate' one step takes the summed gradients at the end. A checkpoint
  falls between batches, so resuming never needs a carry.
  """
  recipe = model.recipe
  sup_pass = _sup_pass_fn(batch, model, optimizer)
  keys = jax.random.split(dropout_key, recipe.n_sup) if recipe.n_sup > 1 else dropout_key[None]
  zeros = jax.tree.map(jnp.zeros_like, state.params) if recipe.sup_update == 'accumulate' else None
  state, carry, grads_sum, metrics = sup_pass(state, None, keys[0], zeros)
  if recipe.n_sup > 1:

    def body(c, key):
      state, carry, grads_sum = c
      state, carry, grads_sum, m = sup_pass(state, carry, key, grads_sum)
      return (state, carry, grads_sum), m

    (state, _, grads_sum), rest = jax.lax.scan(body, (state, carry, grads_sum), keys[1:])
    # The batch's metrics: means over its passes; the last pass's loss apart.
    stacked = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), metrics, rest)
    metrics = {k: jnp.all(v) if k == 'finite' else jnp.mean(v) for k, v in stacked.items()}
    metrics['loss_last_pass'] = stacked['loss'][-1]
  if recipe.sup_update == 'accumulate':
    state, metrics['grad_norm'], finite = apply_gradients(
      state, grads_sum, metrics['loss'], optimizer, recipe.ema_decay
    )
    metrics['finite'] = metrics['finite'] & finite
  return state, metrics


def _sup_pass_fn(batch: dict, model, optimizer):
  """One supervision pass over `batch` as `(state, carry, key, grads_sum) -> (state, carry,
  grads_sum, metrics)`: with sup_update 'each' it steps the optimizer, else it sums gradients."""
  recipe = model.recipe

  def loss_fn(params, carry, key):
    logits_BxTxV, aux = model.apply(
      {'params': params},
      batch['inputs'],
      deterministic=False,
      rngs={'dropout': key},
      carry=carry,
      sup_passes=1,
    )
    return objective(model, logits_BxTxV, aux, batch['targets']), aux

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def sup_pass(state, carry, key, grads_sum):
    (loss, aux), grads = grad_fn(state.params, carry, key)
    carry = jax.lax.stop_gradient(aux.pop('carry', None))
    if recipe.sup_update == 'each':
      state, grad_norm, finite = apply_gradients(state, grads, loss, optimizer, recipe.ema_decay)
    else:
      grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
      grad_norm, finite = optax.tree.norm(grads), jnp.isfinite(loss)
    scalars = {
      k: jnp.asarray(v, jnp.float32)
      for k, v in aux.items()
      if isinstance(v, jax.Array) and v.ndim == 0
    }
    return state, carry, grads_sum, dict(loss=loss, grad_norm=grad_norm, finite=finite, **scalars)

  return sup_pass


def apply_gradients(state: TrainState, grads, loss, optimizer, ema_decay: float):
  """One optimizer (and EMA) update; a non-finite loss or gradient leaves the state as it was."""
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite((params, opt_state))
  keep_good = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  ema = None if state.ema_params is None else ema_update(state.ema_params, params, ema_decay)
  return (
    state.replace(
      params=keep_good(params, state.params),
      opt_state=keep_good(opt_state, state.opt_state),
      ema_params=keep_good(ema, state.ema_params),
    ),
    grad_norm,
    finite,
  )


def all_finite(tree) -> jax.Array:
  """Whether every float in `tree` is finite: an update may overflow from finite gradients."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves]))


def make_step_fn(
  config: ml_collections.ConfigDict,
  model,
  optimizer: optax.GradientTransformation,
  mesh: jax.sharding.Mesh,
  members: int = 0,
  tasks: tuple[str, ...] = (),
):
  """The jitted step on a state stacked over `members` (default: the run's seeds) runs of
  `config`'s settings, each on its task: `step(state, task_indices)`, the indices into
  `tasks` (default: the tasks of `config.task`'s layout; `task_indices(config)`).

  The tasks are an argument, not constants of the program: runs on tasks of one layout
  (copy and reverse) share it, compiled once through a suite's compilation cache, and a
  stack of runs (`training.stacking`) trains them in one program. The batch is sharded
  over `mesh`, the state replicated and donated.
  """
  replicated = parallel.replicated(mesh)
  members = members or config.num_seeds
  one_run = functools.partial(
    train_step,
    model=model.clone(seed_axis=SEED_AXIS) if members > 1 else model,
    optimizer=optimizer,
    tasks=tasks or same_layout(config.task),
    length=config.train_length,
    batch_size=config.batch_size,
    min_length=config.get('train_length_min', 0),  # absent from configs saved before it
    seq_len=config.get('train_seq_len', 0) or None,
    batch_sharding=parallel.batch_sharding(mesh),
  )

  def step(state, task_index_S):
    run = lambda state, task: one_run(state, task_index=task)
    return over_seeds(run, members)(state, task_index_S)

  return jax.jit(
    step,
    in_shardings=(replicated, replicated),
    out_shardings=(replicated, replicated),
    donate_argnums=0,
  )


def task_indices(config: ml_collections.ConfigDict, tasks: tuple[str, ...] = ()) -> jax.Array:
  """`config.task`'s index among `tasks` (default: its layout's), once per seed: the step's
  second argument."""
  index = (tasks or same_layout(config.task)).index(config.task)
  return jnp.full((config.num_seeds,), index, jnp.int32)
