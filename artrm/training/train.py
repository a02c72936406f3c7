"""One training loop for every rung: rungs differ only in the model they build.

`train_and_evaluate` validates the config, then sets the run up, restores its
latest checkpoint or inits fresh seeds, runs the loop (`train_step.make_step_fn`,
evaluations, checkpoints) and evaluates the final state. `train_stack` does the same
for runs that differ only in task and seeds, as one program (`stacking`); a run is a
stack of one.
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
from artrm.evaluation.evaluators import LengthEvaluator
from artrm.models.recipe import compute_record
from artrm.training import advice, checkpointing, preemption, resume, stacking, validation
from artrm.training.builders import evaluator_for, run_model
from artrm.training.train_state import (
  TrainState,
  eval_params,
  init_seeds,
  make_optimizer,
  seed_slice,
  seeds_of,
)
from artrm.training.train_step import make_step_fn, task_indices
from artrm.training.writers import MetricWindow, MetricWriter


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run of `config` in `workdir`.

  Returns the final state (stacked over seeds), the last evaluation
  {seed: {length: metrics}}, the best mean metric and the model. The config
  is validated before any work, and the workdir locked: one trainer at a time.
  SIGTERM or SIGINT stop it after the step in flight, checkpointed (`preemption`).
  """
  return train_stack([config], [workdir])[0]


def train_stack(
  configs: list[ml_collections.ConfigDict], workdirs: list[str]
) -> list[dict[str, Any]]:
  """Trains (or resumes) runs that differ only in task and seeds as one program
  (`stacking`), each in its own workdir; returns `train_and_evaluate`'s result per run."""
  for config in configs:
    validation.validate(config)
  stacking.check_stackable(configs, workdirs)
  with contextlib.ExitStack() as locks:
    # Processes of a multi-host run share the workdirs: the first holds the locks for all.
    if jax.process_index() == 0:
      for workdir in workdirs:
        locks.enter_context(workdir_lib.lock(workdir))
    stop_requested = locks.enter_context(preemption.stop_requests())
    try:
      return _train_and_evaluate(configs, workdirs, stop_requested)
    except FloatingPointError as e:
      raise FloatingPointError(f'{e} {advice.after_divergence(configs[0], workdirs[0])}') from None
    except workdir_lib.WriteError as e:
      raise workdir_lib.WriteError(f'{e} {advice.after_write_error(workdirs[0])}') from None


@dataclasses.dataclass
class _Run:
  """One run of a stack: its config, workdir, evaluator, checkpoints and metric writer, and
  its seeds' place on the stack's seed axis."""

  config: ml_collections.ConfigDict
  workdir: str
  evaluator: LengthEvaluator
  cfg: dict  # the config as JSON reads it back
  seeds: list[int]
  members: slice
  ckpts: checkpointing.RunCheckpoints
  writer: MetricWriter


@dataclasses.dataclass
class _Stack:
  """What setup builds once, shared by restore, loop and final evaluation: the runs, and
  the model, optimizer, devices and tasks of the one program that trains them."""

  runs: list[_Run]
  model: Any
  optimizer: optax.GradientTransformation
  mesh: jax.sharding.Mesh
  tasks: tuple[str, ...]
  seq_len: int
  is_main: bool

  @property
  def config(self) -> ml_collections.ConfigDict:
    """The settings every run shares (all but task and seed)."""
    return self.runs[0].config

  @property
  def members(self) -> int:
    return self.runs[-1].members.stop

  def part(self, tree, run: _Run):
    """`run`'s slice of a tree stacked over the stack's members."""
    return stacking.run_slice(tree, run.members, self.members)


def _train_and_evaluate(
  configs: list[ml_collections.ConfigDict],
  workdirs: list[str],
  stop_requested: Callable[[bool], str],
) -> list[dict[str, Any]]:
  stack = _setup(configs, workdirs)
  state, bests = _restore_or_init(stack)
  state, results, bests = _loop(stack, state, bests, stop_requested)
  return [
    dict(state=part, eval=_final_eval(stack, run, part, res), best=best, model=stack.model)
    for run, res, best in zip(stack.runs, results, bests)
    for part in [stack.part(state, run)]
  ]


def _setup(configs: list[ml_collections.ConfigDict], workdirs: list[str]) -> _Stack:
  """The stack's model, optimizer and devices, and each run's evaluator, checkpoints and
  metric writer (of configs `validation.validate` and `stacking.check_stackable` passed)."""
  config = configs[0]
  model = run_model(config)
  is_main = jax.process_index() == 0
  runs = []
  for c, workdir, members in zip(configs, workdirs, stacking.member_slices(configs)):
    cfg = config_dict(c)
    writer = MetricWriter(
      workdir,
      tensorboard=c.log.tensorboard,
      wandb_project=c.log.wandb_project,
      config=cfg,
      enabled=is_main,
    )
    ckpts = checkpointing.RunCheckpoints(workdir, c.checkpoint.max_to_keep)
    runs.append(_Run(c, workdir, evaluator_for(c), cfg, seeds_of(c), members, ckpts, writer))
  return _Stack(
    runs=runs,
    model=model,
    optimizer=make_optimizer(config.optimizer, model.recipe, config.max_steps),
    mesh=parallel.data_mesh(),
    tasks=stacking.stack_tasks(configs),
    seq_len=stacking.seq_len(configs),
    is_main=is_main,
  )


def _restore_or_init(stack: _Stack) -> tuple[TrainState, list[float]]:
  """Each run's latest good checkpoint, or fresh seeds, stacked; the best metric each run
  saved so far. Runs of a stack go on from one step.

  Records after the state's step are dropped, and the config is written beside them."""
  states, bests = [], []
  for run in stack.runs:
    state, best = _restore_or_init_run(stack, run)
    states.append(state)
    bests.append(best)
  steps = {run.workdir: int(state.step[0]) for run, state in zip(stack.runs, states)}
  if len(set(steps.values())) > 1:
    raise validation.ConfigError(
      f'The runs of a stack resume from one step, but their checkpoints are at {steps}: '
      'train them apart (artrm suite --stack=off) to bring them level.'
    )
  return stacking.concat(states), bests


def _restore_or_init_run(stack: _Stack, run: _Run) -> tuple[TrainState, float]:
  replicated = parallel.replicated(stack.mesh)
  changes = {}
  if run.ckpts.periodic.latest_step() is not None:
    state, changes = resume.latest(
      run.ckpts, stack.model, stack.optimizer, run.seeds, run.cfg, replicated
    )
  else:
    state = jax.device_put(init_seeds(stack.model, stack.optimizer, run.seeds), replicated)
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
  if stack.is_main:
    workdir_lib.write_json(run.workdir, workdir_lib.CONFIG, run.cfg)
  return state, best


def _compile(stack: _Stack, state: TrainState):
  """The stack's step (compiled unless the runs are finished) and task indices; each run's
  'setup' record."""
  config, mc = stack.config, stack.model.config
  step_fn = make_step_fn(
    config, stack.model, stack.optimizer, stack.mesh, stack.members, stack.tasks
  )
  task = jax.numpy.concatenate([task_indices(run.config, stack.tasks) for run in stack.runs])
  start = int(state.step[0])
  t0 = time.perf_counter()
  if start < config.max_steps:  # a finished run compiles nothing
    step_fn = step_fn.lower(state, task).compile()
  setup = dict(
    compile_seconds=time.perf_counter() - t0,
    seq_len=stack.seq_len,
    n_params=sum(math.prod(x.shape[1:]) for x in jax.tree.leaves(state.params)),
    n_layer=mc.n_layer,
    n_outer_loops=mc.n_outer_loops,
    n_inner_loops=mc.n_inner_loops,
    devices=stack.mesh.devices.size,
    stacked_runs=len(stack.runs),
    **compute_record(stack.model.rung, mc, stack.model.recipe),
  )
  for run in stack.runs:
    run.writer.write(start, 'setup', dict(setup, seeds=run.seeds))
  return step_fn, task


def _loop(
  stack: _Stack, state: TrainState, bests: list[float], stop_requested: Callable[[bool], str]
) -> tuple[TrainState, list[dict[int, dict]], list[float]]:
  """Steps up to max_steps with their logs, evaluations and checkpoints; a stop request
  checkpoints the step in flight and raises `preemption.Preempted`."""
  config = stack.config
  step_fn, task = _compile(stack, state)
  start = int(state.step[0])
  ckpt_every = config.checkpoint.every_steps or max(1, config.max_steps // 10)
  wait_each_step = parallel.one_step_at_a_time(stack.mesh)
  window = MetricWindow(config.batch_size * stack.seq_len)
  results: list[dict[int, dict]] = [{} for _ in stack.runs]  # the last evaluation's
  bar = tqdm.tqdm(
    total=config.max_steps,
    initial=start,
    desc=f'{stack.model.config.name} {",".join(run.config.task for run in stack.runs)}',
    disable=not (stack.is_main and config.log.progress_bar and sys.stderr.isatty()),
  )

  def log_window(step: int):
    logged = window.flush(step)  # before any save: a NaN never reaches a checkpoint
    for run in stack.runs:
      for seed, record in zip(run.seeds, logged[run.members]):
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
        evals = [_evaluate(stack, run, state, step, b) for run, b in zip(stack.runs, bests)]
        results, bests = [r for r, _ in evals], [b for _, b in evals]
      # The one place the loop reads a stop request; the last step ends the run anyway.
      stopped_by = stop_requested(logs) if step < config.max_steps else ''
      if stopped_by:
        log_window(step)  # the resumed run logs only the steps after this one
      if is_ckpt or stopped_by:
        for run in stack.runs:
          run.ckpts.save(step, stack.part(state, run), run.cfg)
      if stopped_by:
        _stopped(stack, step, stopped_by)
  finally:
    bar.close()
    _close(stack)
  return state, results, bests


def _close(stack: _Stack):
  """Every run's checkpoints finished on disk, its files closed."""
  for run in stack.runs:
    run.ckpts.wait()
    run.ckpts.close()
    run.writer.close()


def _stopped(stack: _Stack, step: int, by: str):
  """After the checkpoint of a stop request: each run's record of it, then the stop."""
  for run in stack.runs:
    run.ckpts.wait()  # finished on disk before the record says so
    run.writer.write(step, 'preempted', dict(by=by))
  raise preemption.Preempted(step, by)


def _evaluate(
  stack: _Stack, run: _Run, stacked: TrainState, step: int, best: float
) -> tuple[dict[int, dict], float]:
  """Evaluates every seed of `run` (its part of the `stacked` state) and writes its
  records; saves the best checkpoint when the mean metric at train length beats `best`."""
  config, state = run.config, stack.part(stacked, run)
  results = evaluate_seeds(run.evaluator, stack.model, eval_params(state), run.seeds, stack.mesh)
  for seed, by_length in results.items():
    run.writer.write(step, 'eval', dict(seed=seed, **eval_scalars(by_length)))
    if stack.is_main:
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


def _final_eval(
  stack: _Stack, run: _Run, state: TrainState, results: dict[int, dict]
) -> dict[int, dict]:
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
      else evaluate_seeds(run.evaluator, stack.model, eval_params(state), run.seeds, stack.mesh)
    )
  if stack.is_main:
    workdir_lib.write_final_eval(run.workdir, step, results, settings)
  return results


def final_eval_settings(evaluator: LengthEvaluator) -> dict:
  """What the final evaluation's numbers depend on besides the params, as JSON reads it back."""
  return json.loads(json.dumps(dict(lengths=list(evaluator.lengths), **evaluator.settings())))
