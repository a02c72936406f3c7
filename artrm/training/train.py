"""One training loop for every rung: rungs differ only in the model they build.

`train_step` is a module-level pure function of the state; the loop jits it
once (batch sharded over a data mesh, state replicated and donated). Batches
are sampled inside the step from `fold_in(run key, step)`, so a run is a pure
function of (config, step): resuming from a checkpoint replays the exact
same batches and dropout masks, and the result is bitwise identical to an
uninterrupted run.
"""

import contextlib
import functools
import json
import math
import sys
import time
from typing import Any, Callable

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from artrm import one_off, parallel
from artrm import workdir as workdir_lib
from artrm.data import IGNORE_INDEX, get_task, same_layout, sample_batch_of
from artrm.evaluation.evaluators import LengthEvaluator
from artrm.models import ModelConfig, build_model, fresh_params, normalize_budget
from artrm.models.recipe import Recipe, compute_record
from artrm.training import checkpointing, preemption, validation
from artrm.training.writers import MetricWriter


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # raw key data (uint32): saved by Orbax like any array
  ema_params: Any = None  # recipe.ema_decay > 0: the weights evaluation uses


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
  """The run's ModelConfig, with the compute budget applied (paper-spec rule)."""
  mc = ModelConfig.from_mapping(config.model.to_dict())
  return normalize_budget(mc, config.budget) if config.budget else mc


def run_model(config: ml_collections.ConfigDict):
  """The module a run trains: its rung and sizes, and its recipe checked against the rung."""
  return build_model(model_config(config), Recipe.of_config(config))


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
  (but fixed y0 / z0, which `recipe.fixed_init` keeps out of the optimizer).

  `opt.embed_lr_mult` scales the embeddings' whole update (Adam step and decay):
  the step size of the input alone, everything else as it was."""
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


SEED_AXIS = 'seeds'


def over_seeds(fn, num_seeds: int):
  """`fn` on a state stacked over seeds.

  Several seeds are vmapped over `SEED_AXIS`; a model built with that
  `seed_axis` then skips the steps of ACT / TRM once every seed has halted.
  One seed is squeezed and run unbatched.
  """
  if num_seeds > 1:
    return jax.vmap(fn, axis_name=SEED_AXIS)
  expand = lambda tree: jax.tree.map(lambda x: x[None], tree)
  return lambda state: expand(fn(seed_slice(state, 0)))


@functools.partial(jax.jit, static_argnums=1)
def seed_slice(tree, i: int):
  return jax.tree.map(lambda x: x[i], tree)


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
  batch_sharding=None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One batch of `tasks[task_index]` (`data.sample_batch_of`): `recipe.n_sup` supervision
  passes over it, then step + 1.

  Each pass starts from the detached (y, z) the last one ended with and ends
  in a loss; with sup_update 'each' every pass makes an optimizer step, with
  'accumulate' one step takes the summed gradients at the end. A checkpoint
  falls between batches, so resuming never needs a carry.
  """
  recipe = model.recipe
  step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  data_key, dropout_key = jax.random.split(step_key)
  batch = sample_batch_of(data_key, tasks, task_index, length, batch_size, min_length)
  if batch_sharding is not None:
    batch = jax.lax.with_sharding_constraint(batch, batch_sharding)

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
  return state.replace(step=state.step + 1), metrics


def all_finite(tree) -> jax.Array:
  """Whether every float in `tree` is finite: an update may overflow from finite gradients."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves]))


def make_step_fn(
  config: ml_collections.ConfigDict,
  model,
  optimizer: optax.GradientTransformation,
  mesh: jax.sharding.Mesh,
):
  """The run's jitted step on a state stacked over its seeds (the loop's and the benchmark's),
  called as `step(state, task_index(config))`.

  The task is an argument, not a constant of the program: runs on tasks of one layout
  (copy and reverse) then share it, compiled once through a suite's compilation cache. The
  batch is sharded over `mesh`, the state replicated and donated.
  """
  replicated = parallel.replicated(mesh)
  one_seed = functools.partial(
    train_step,
    model=model.clone(seed_axis=SEED_AXIS) if config.num_seeds > 1 else model,
    optimizer=optimizer,
    tasks=same_layout(config.task),
    length=config.train_length,
    batch_size=config.batch_size,
    min_length=config.get('train_length_min', 0),  # absent from configs saved before it
    batch_sharding=parallel.batch_sharding(mesh),
  )

  def step(state, task_index):
    return over_seeds(functools.partial(one_seed, task_index=task_index), config.num_seeds)(state)

  return jax.jit(
    step,
    in_shardings=(replicated, replicated),
    out_shardings=(replicated, replicated),
    donate_argnums=0,
  )


def task_index(config: ml_collections.ConfigDict) -> jax.Array:
  """`config.task`'s index among the tasks of its layout: the step's second argument."""
  return jnp.int32(same_layout(config.task).index(config.task))


def evaluator_for(config: ml_collections.ConfigDict, **overrides) -> LengthEvaluator:
  e = config.eval
  lengths = sorted(set(e.lengths) | {config.train_length})  # best is picked at train length
  kwargs = dict(
    task=config.task,
    lengths=lengths,
    n_samples=e.n_samples,
    seed=e.seed,
    batch_size=e.batch_size,
    decoding=e.decoding,
    inference_steps=e.inference_steps or None,
    full_compute=e.full_compute,
    kv_cache=e.get('kv_cache', False),
  )  # absent from configs saved before it
  return LengthEvaluator(**{**kwargs, **overrides})


def eval_scalars(results: dict[int, dict]) -> dict[str, float]:
  """Flat `L{length}/{metric}` scalars (per-position lists go to the eval files)."""
  return {
    f'L{L}/{k}': v
    for L, m in results.items()
    for k, v in m.items()
    if not isinstance(v, (list, tuple, np.ndarray))
  }


def evaluate_seeds(
  evaluator: LengthEvaluator, model, params, seeds: list[int], mesh: jax.sharding.Mesh | None = None
) -> dict[int, dict]:
  """{seed: {length: metrics}} for params stacked over seeds (replicated on `mesh`, over
  whose devices the prompts are split)."""
  return {seed: evaluator.run(model, seed_slice(params, i), mesh) for i, seed in enumerate(seeds)}


def config_dict(config: ml_collections.ConfigDict) -> dict:
  """A JSON round-trip of the config, so saved and current ones compare equal."""
  return json.loads(config.to_json())


class _Window:
  """Step metrics kept on device until a flush; one host sync per log period."""

  def __init__(self, tokens_per_step: int):
    self.tokens_per_step = tokens_per_step
    self.pending: list[dict] = []
    self.start = time.perf_counter()

  def add(self, metrics: dict):
    self.pending.append(metrics)

  def flush(self, step: int) -> list[dict[str, float]]:
    """Per seed, the window's mean metrics and throughput (all seeds' tokens)."""
    if not self.pending:
      return []
    host = jax.device_get(self.pending)  # metrics [S] per step
    n, seconds = len(host), time.perf_counter() - self.start
    self.pending, self.start = [], time.perf_counter()
    bad = [i for i, m in enumerate(host) if not np.all(m['finite'])]
    if bad:
      m = host[bad[0]]
      what = (
        'loss or gradient'
        if not np.all(np.isfinite(m['loss']) & np.isfinite(m['grad_norm']))
        else 'params or optimizer state after the update'
      )
      raise FloatingPointError(
        f'Non-finite {what} at step {step - n + 1 + bad[0]} '
        f'(loss={m["loss"].tolist()}); the update of the non-finite supervision pass was not '
        'kept.'
      )
    means = {k: np.mean([m[k] for m in host], axis=0) for k in host[0] if k != 'finite'}
    n_seeds = len(means['loss'])
    speed = dict(
      steps_per_sec=n / seconds, tokens_per_sec=n * n_seeds * self.tokens_per_step / seconds
    )
    return [{**{k: float(v[i]) for k, v in means.items()}, **speed} for i in range(n_seeds)]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run of `config` in `workdir`.

  Returns the final state (stacked over seeds), the last evaluation
  {seed: {length: metrics}}, the best mean metric and the model. The config
  is validated before any work, and the workdir locked: one trainer at a time.
  SIGTERM or SIGINT stop it after the step in flight, checkpointed (`preemption`).
  """
  validation.check_config(config)
  # Processes of a multi-host run share the workdir: the first holds the lock for all.
  lock = workdir_lib.lock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
  with lock, preemption.stop_requests() as stop_requested:
    try:
      return _train_and_evaluate(config, workdir, stop_requested)
    except FloatingPointError as e:
      raise FloatingPointError(f'{e} {divergence_advice(config, workdir)}') from None
    except workdir_lib.WriteError as e:
      raise workdir_lib.WriteError(f'{e} {write_advice(workdir)}') from None


def write_advice(workdir: str) -> str:
  """What to do after a failed write: the unfinished checkpoint is gone, the last one stays."""
  steps = workdir_lib.checkpoint_steps(workdir)
  where = f'from its checkpoint at step {max(steps)}' if steps else 'from the start'
  return f'Free space there (or make it writable) and re-run the same command: it resumes {where}.'


def divergence_advice(config: ml_collections.ConfigDict, workdir: str) -> str:
  """What to do after a non-finite step: the exact flags that resume from the last checkpoint."""
  lr, clip = config.optimizer.learning_rate, config.optimizer.grad_clip_norm
  remedy = f'--config.optimizer.learning_rate={lr / 10:g} (now {lr:g})' + (
    '' if clip else ' or --config.optimizer.grad_clip_norm=1.0'
  )
  steps = workdir_lib.checkpoint_steps(workdir)
  if not steps:
    return f'No checkpoint was saved; re-run the same command with {remedy} to start over.'
  return (
    f'The checkpoint at step {max(steps)} holds finite params; re-run the same command '
    f'with {remedy} to resume from it (these optimizer fields may change on resume).'
  )


def abstract_state(model, saved: dict, sharding) -> TrainState:
  """The shapes (placed on `sharding`) of the state a checkpoint saved with config `saved` holds."""
  c = ml_collections.ConfigDict(saved)
  optimizer = make_optimizer(c.optimizer, model.recipe, c.max_steps)
  abstract = seeds_shape(model, optimizer, seeds_of(c))
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)


def _resume(
  ckpts: checkpointing.RunCheckpoints, model, optimizer, seeds: list[int], cfg: dict, replicated
) -> tuple[TrainState, dict[str, tuple]]:
  """The latest good checkpoint's state, and the optimizer fields changed since it was saved
  (`checkpointing.RESUME_CHANGES`; the optimizer state carries over to the new optimizer).

  Only shapes are built for it: a resumed run never computes a fresh init."""
  _, restored, saved = ckpts.restore(
    'latest',
    lambda saved: abstract_state(model, saved, replicated),
    cfg,
    checkpointing.MUTABLE_FIELDS + checkpointing.RESUME_CHANGES,
    move_aside=True,
  )
  # Gradient clipping adds a stateless stage: the same arrays in another tree.
  fresh = seeds_shape(model, optimizer, seeds)
  opt_state = jax.tree.unflatten(
    jax.tree.structure(fresh.opt_state), jax.tree.leaves(restored.opt_state)
  )
  changes = {
    k: v
    for k, v in checkpointing.changed_fields(saved, cfg).items()
    if k in checkpointing.RESUME_CHANGES
  }
  return restored.replace(opt_state=opt_state), changes


def _train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, stop_requested: Callable[[bool], str]
) -> dict[str, Any]:
  model = run_model(config)
  mc = model.config
  task = get_task(config.task)
  seq_len = task.seq_len(config.train_length)
  evaluator = evaluator_for(config)
  evaluator.check_fits(mc.block_size)
  mesh = parallel.data_mesh()
  parallel.check_batch_divisible(config.batch_size, mesh)
  replicated = parallel.replicated(mesh)
  optimizer = make_optimizer(config.optimizer, model.recipe, config.max_steps)
  cfg = config_dict(config)
  seeds = seeds_of(config)

  ckpts = checkpointing.RunCheckpoints(workdir, config.checkpoint.max_to_keep)
  is_main = jax.process_index() == 0
  writer = MetricWriter(
    workdir,
    tensorboard=config.log.tensorboard,
    wandb_project=config.log.wandb_project,
    config=cfg,
    enabled=is_main,
  )
  changes = {}
  if ckpts.periodic.latest_step() is not None:
    state, changes = _resume(ckpts, model, optimizer, seeds, cfg, replicated)
  else:
    state = jax.device_put(init_seeds(model, optimizer, seeds), replicated)
  # Read even with no periodic checkpoint: a run killed before its first one may have saved a best.
  best = (ckpts.best_metrics(move_aside=True) or {}).get('value', -math.inf)
  writer.truncate_after(int(state.step[0]))  # records of steps after the checkpoint, torn lines
  if changes:
    logging.warning(
      'Resuming at step %d with %s',
      int(state.step[0]),
      ', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in changes.items()),
    )
    writer.write(
      int(state.step[0]), 'resume', dict(changes={k: list(v) for k, v in changes.items()})
    )
  if is_main:
    workdir_lib.write_json(workdir, workdir_lib.CONFIG, cfg)

  step_fn, task = make_step_fn(config, model, optimizer, mesh), task_index(config)
  start = int(state.step[0])
  t0 = time.perf_counter()
  if start < config.max_steps:  # a finished run compiles nothing
    step_fn = step_fn.lower(state, task).compile()
  writer.write(
    start,
    'setup',
    dict(
      compile_seconds=time.perf_counter() - t0,
      seq_len=seq_len,
      seeds=seeds,
      n_params=sum(math.prod(x.shape[1:]) for x in jax.tree.leaves(state.params)),
      n_layer=mc.n_layer,
      n_outer_loops=mc.n_outer_loops,
      n_inner_loops=mc.n_inner_loops,
      devices=mesh.devices.size,
      **compute_record(model.rung, mc, model.recipe),
    ),
  )

  ckpt_every = config.checkpoint.every_steps or max(1, config.max_steps // 10)
  wait_each_step = parallel.one_step_at_a_time(mesh)
  window = _Window(config.batch_size * seq_len)
  results: dict[int, dict] = {}
  bar = tqdm.tqdm(
    total=config.max_steps,
    initial=start,
    desc=f'{mc.name} {config.task}',
    disable=not (is_main and config.log.progress_bar and sys.stderr.isatty()),
  )

  def log_window(step: int):
    logged = window.flush(step)  # before any save: a NaN never reaches a checkpoint
    for seed, record in zip(seeds, logged):
      writer.write(step, 'train', dict(seed=seed, **record))
    if logged:
      bar.set_postfix(loss=f'{np.mean([r["loss"] for r in logged]):.4f}')

  try:
    for step in range(start + 1, config.max_steps + 1):
      state, metrics = step_fn(state, task)
      if wait_each_step:
        jax.block_until_ready(metrics)
      window.add(metrics)
      bar.update()
      is_eval = step % config.eval.every_steps == 0 or step == config.max_steps
      is_ckpt = step % ckpt_every == 0 or step == config.max_steps
      logs = step % config.log.every_steps == 0 or is_eval or is_ckpt
      if logs:
        log_window(step)
      if is_eval:
        results = evaluate_seeds(evaluator, model, eval_params(state), seeds, mesh)
        for seed, by_length in results.items():
          writer.write(step, 'eval', dict(seed=seed, **eval_scalars(by_length)))
          if is_main:
            evaluator.write(by_length, workdir, step, name=f'seed{seed}')
        metric = config.checkpoint.best_metric
        value = float(np.mean([r[config.train_length][metric] for r in results.values()]))
        if value > best:
          best = value
          ckpts.save(
            step,
            state,
            cfg,
            best_metrics=dict(step=step, metric=metric, value=value, length=config.train_length),
          )
      # The one place the loop reads a stop request; the last step ends the run anyway.
      stopped_by = stop_requested(logs) if step < config.max_steps else ''
      if stopped_by:
        log_window(step)  # the resumed run logs only the steps after this one
      if is_ckpt or stopped_by:
        ckpts.save(step, state, cfg)
      if stopped_by:
        ckpts.wait()  # finished on disk before the record says so
        writer.write(step, 'preempted', dict(by=stopped_by))
        raise preemption.Preempted(step, stopped_by)
  finally:
    bar.close()
    ckpts.wait()
    ckpts.close()
    writer.close()
  settings = final_eval_settings(evaluator)
  if not results:  # nothing trained now: reuse the final evaluation if it is this one
    final = workdir_lib.read_final_eval(workdir)
    same = (
      final is not None and final['step'] == int(state.step[0]) and final['settings'] == settings
    )
    results = (
      final['results']
      if same
      else evaluate_seeds(evaluator, model, eval_params(state), seeds, mesh)
    )
  if is_main:
    workdir_lib.write_final_eval(workdir, int(state.step[0]), results, settings)
  return dict(state=state, eval=results, best=best, model=model)


def final_eval_settings(evaluator: LengthEvaluator) -> dict:
  """What the final evaluation's numbers depend on besides the params, as JSON reads it back."""
  return json.loads(json.dumps(dict(lengths=list(evaluator.lengths), **evaluator.settings())))
