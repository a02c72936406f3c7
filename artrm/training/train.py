"""One training loop for every rung: rungs differ only in the model they build.

`train_and_evaluate` validates the config, then sets the run up, restores its
latest checkpoint or inits fresh seeds, runs the loop (`train_step.make_step_fn`,
evaluations, checkpoints) and evaluates the final state.
"""

import contextlib
import dataclasses
import json
import math
import sys
import time
from typing import Any, Callable

from absl import logging
import jax
import ml_collections
import numpy as np
import optax
import tqdm

from artrm import parallel
from artrm import workdir as workdir_lib
from artrm.configs import length_gen
from artrm.data import get_task
from artrm.evaluation.evaluators import LengthEvaluator
from artrm.models.recipe import compute_record
from artrm.training import checkpointing, preemption, validation
from artrm.training.builders import evaluator_for, run_model
from artrm.training.train_state import (
  TrainState,
  abstract_state,
  eval_params,
  init_seeds,
  make_optimizer,
  seed_slice,
  seeds_of,
  seeds_shape,
)
from artrm.training.train_step import make_step_fn, task_index
from artrm.training.writers import MetricWriter


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
  validation.validate(config)
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


def _resume(
  ckpts: checkpointing.RunCheckpoints, model, optimizer, seeds: list[int], cfg: dict, replicated
) -> tuple[TrainState, dict[str, tuple]]:
  """The latest good checkpoint's state, and the optimizer fields changed since it was saved
  (`checkpointing.RESUME_CHANGES`; the optimizer state carries over to the new optimizer).

  Only shapes are built for it: a resumed run never computes a fresh init. A field the saved
  config lacks held its default (`length_gen.base_config`)."""
  defaults = config_dict(length_gen.base_config())
  _, restored, saved = ckpts.restore(
    'latest',
    lambda saved: abstract_state(model, saved, replicated),
    cfg,
    checkpointing.MUTABLE_FIELDS + checkpointing.RESUME_CHANGES,
    move_aside=True,
    defaults=defaults,
  )
  # Gradient clipping adds a stateless stage: the same arrays in another tree.
  fresh = seeds_shape(model, optimizer, seeds)
  opt_state = jax.tree.unflatten(
    jax.tree.structure(fresh.opt_state), jax.tree.leaves(restored.opt_state)
  )
  changes = {
    k: v
    for k, v in checkpointing.changed_fields(saved, cfg, defaults=defaults).items()
    if k in checkpointing.RESUME_CHANGES
  }
  return restored.replace(opt_state=opt_state), changes


@dataclasses.dataclass
class _Run:
  """What setup builds once for a run, shared by restore, loop and final evaluation."""

  config: ml_collections.ConfigDict
  workdir: str
  model: Any
  evaluator: LengthEvaluator
  mesh: jax.sharding.Mesh
  optimizer: optax.GradientTransformation
  cfg: dict  # the config as JSON reads it back
  seeds: list[int]
  seq_len: int
  ckpts: checkpointing.RunCheckpoints
  writer: MetricWriter
  is_main: bool


def _train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, stop_requested: Callable[[bool], str]
) -> dict[str, Any]:
  run = _setup(config, workdir)
  state, best = _restore_or_init(run)
  state, results, best = _loop(run, state, best, stop_requested)
  return dict(state=state, eval=_final_eval(run, state, results), best=best, model=run.model)


def _setup(config: ml_collections.ConfigDict, workdir: str) -> _Run:
  """The run's model, evaluator, devices, optimizer, checkpoints and metric writer (of a
  config `validation.validate` passed)."""
  model = run_model(config)
  evaluator = evaluator_for(config)
  mesh = parallel.data_mesh()
  cfg = config_dict(config)
  is_main = jax.process_index() == 0
  return _Run(
    config=config,
    workdir=workdir,
    model=model,
    evaluator=evaluator,
    mesh=mesh,
    optimizer=make_optimizer(config.optimizer, model.recipe, config.max_steps),
    cfg=cfg,
    seeds=seeds_of(config),
    seq_len=get_task(config.task).seq_len(config.train_length),
    ckpts=checkpointing.RunCheckpoints(workdir, config.checkpoint.max_to_keep),
    writer=MetricWriter(
      workdir,
      tensorboard=config.log.tensorboard,
      wandb_project=config.log.wandb_project,
      config=cfg,
      enabled=is_main,
    ),
    is_main=is_main,
  )


def _restore_or_init(run: _Run) -> tuple[TrainState, float]:
  """The latest good checkpoint's state, or fresh seeds; the best metric saved so far.

  Records after the state's step are dropped, and the config is written beside them."""
  replicated = parallel.replicated(run.mesh)
  changes = {}
  if run.ckpts.periodic.latest_step() is not None:
    state, changes = _resume(run.ckpts, run.model, run.optimizer, run.seeds, run.cfg, replicated)
  else:
    state = jax.device_put(init_seeds(run.model, run.optimizer, run.seeds), replicated)
  # Read even with no periodic checkpoint: a run killed before its first one may have saved a best.
  best = (run.ckpts.best_metrics(move_aside=True) or {}).get('value', -math.inf)
  step = int(state.step[0])
  run.writer.truncate_after(step)  # records of steps after the checkpoint, torn lines
  if changes:
    logging.warning(
      'Resuming at step %d with %s',
      step,
      ', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in changes.items()),
    )
    run.writer.write(step, 'resume', dict(changes={k: list(v) for k, v in changes.items()}))
  if run.is_main:
    workdir_lib.write_json(run.workdir, workdir_lib.CONFIG, run.cfg)
  return state, best


def _compile(run: _Run, state: TrainState):
  """The run's step (compiled unless the run is finished) and task; the 'setup' record."""
  config, mc = run.config, run.model.config
  step_fn, task = make_step_fn(config, run.model, run.optimizer, run.mesh), task_index(config)
  start = int(state.step[0])
  t0 = time.perf_counter()
  if start < config.max_steps:  # a finished run compiles nothing
    step_fn = step_fn.lower(state, task).compile()
  run.writer.write(
    start,
    'setup',
    dict(
      compile_seconds=time.perf_counter() - t0,
      seq_len=run.seq_len,
      seeds=run.seeds,
      n_params=sum(math.prod(x.shape[1:]) for x in jax.tree.leaves(state.params)),
      n_layer=mc.n_layer,
      n_outer_loops=mc.n_outer_loops,
      n_inner_loops=mc.n_inner_loops,
      devices=run.mesh.devices.size,
      **compute_record(run.model.rung, mc, run.model.recipe),
    ),
  )
  return step_fn, task


def _loop(
  run: _Run, state: TrainState, best: float, stop_requested: Callable[[bool], str]
) -> tuple[TrainState, dict[int, dict], float]:
  """Steps up to max_steps with their logs, evaluations and checkpoints; a stop request
  checkpoints the step in flight and raises `preemption.Preempted`."""
  config = run.config
  step_fn, task = _compile(run, state)
  start = int(state.step[0])
  ckpt_every = config.checkpoint.every_steps or max(1, config.max_steps // 10)
  wait_each_step = parallel.one_step_at_a_time(run.mesh)
  window = _Window(config.batch_size * run.seq_len)
  results: dict[int, dict] = {}
  bar = tqdm.tqdm(
    total=config.max_steps,
    initial=start,
    desc=f'{run.model.config.name} {config.task}',
    disable=not (run.is_main and config.log.progress_bar and sys.stderr.isatty()),
  )

  def log_window(step: int):
    logged = window.flush(step)  # before any save: a NaN never reaches a checkpoint
    for seed, record in zip(run.seeds, logged):
      run.writer.write(step, 'train', dict(seed=seed, **record))
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
        results, best = _evaluate(run, state, step, best)
      # The one place the loop reads a stop request; the last step ends the run anyway.
      stopped_by = stop_requested(logs) if step < config.max_steps else ''
      if stopped_by:
        log_window(step)  # the resumed run logs only the steps after this one
      if is_ckpt or stopped_by:
        run.ckpts.save(step, state, run.cfg)
      if stopped_by:
        run.ckpts.wait()  # finished on disk before the record says so
        run.writer.write(step, 'preempted', dict(by=stopped_by))
        raise preemption.Preempted(step, stopped_by)
  finally:
    bar.close()
    run.ckpts.wait()
    run.ckpts.close()
    run.writer.close()
  return state, results, best


def _evaluate(
  run: _Run, state: TrainState, step: int, best: float
) -> tuple[dict[int, dict], float]:
  """Evaluates every seed and writes its records; saves the best checkpoint when the mean
  metric at train length beats `best`."""
  config = run.config
  results = evaluate_seeds(run.evaluator, run.model, eval_params(state), run.seeds, run.mesh)
  for seed, by_length in results.items():
    run.writer.write(step, 'eval', dict(seed=seed, **eval_scalars(by_length)))
    if run.is_main:
      run.evaluator.write(by_length, run.workdir, step, name=f'seed{seed}')
  metric = config.checkpoint.best_metric
  value = float(np.mean([r[config.train_length][metric] for r in results.values()]))
  if value > best:
    best = value
    run.ckpts.save(
      step,
      state,
      run.cfg,
      best_metrics=dict(step=step, metric=metric, value=value, length=config.train_length),
    )
  return results, best


def _final_eval(run: _Run, state: TrainState, results: dict[int, dict]) -> dict[int, dict]:
  """The final state's evaluation, written for the results store: the loop's last one, the
  saved one when nothing trained now and its settings match, else a fresh one."""
  settings = final_eval_settings(run.evaluator)
  step = int(state.step[0])
  if not results:  # nothing trained now: reuse the final evaluation if it is this one
    final = workdir_lib.read_final_eval(run.workdir)
    same = final is not None and final['step'] == step and final['settings'] == settings
    results = (
      final['results']
      if same
      else evaluate_seeds(run.evaluator, run.model, eval_params(state), run.seeds, run.mesh)
    )
  if run.is_main:
    workdir_lib.write_final_eval(run.workdir, step, results, settings)
  return results


def final_eval_settings(evaluator: LengthEvaluator) -> dict:
  """What the final evaluation's numbers depend on besides the params, as JSON reads it back."""
  return json.loads(json.dumps(dict(lengths=list(evaluator.lengths), **evaluator.settings())))
