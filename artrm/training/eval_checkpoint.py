"""`artrm eval`: evaluate a saved checkpoint with the config it was trained with."""

import os
from typing import Any

import ml_collections

from artrm import parallel
from artrm import workdir as workdir_lib
from artrm.tables import markdown_table
from artrm.training import checkpointing, train, validation


def load_checkpoint(workdir: str, which: str | int = 'latest'):
  """(config, model, state stacked over seeds, step) of checkpoint `which`.

  'latest' skips damaged checkpoints (with a warning) for the newest good one;
  only finished checkpoints are seen, so a run may be training meanwhile.
  Nothing is written to the workdir.
  """
  which = checkpointing.parse_which(which)
  if not os.path.isdir(workdir_lib.path(workdir, workdir_lib.CHECKPOINTS)):
    raise FileNotFoundError(
      f'No training run in {workdir}: train there first (artrm train --workdir=...).'
    )
  model_of = lambda saved: train.run_model(ml_collections.ConfigDict(saved))
  replicated = parallel.replicated(parallel.data_mesh())
  ckpts = checkpointing.RunCheckpoints(workdir, create=False)
  try:
    if ckpts.resolve_step(which) is None:
      raise FileNotFoundError(
        f'No {which} checkpoint in {workdir}: train there first (artrm train --workdir=...).'
      )
    step, state, saved = ckpts.restore(
      which, lambda saved: train.abstract_state(model_of(saved), saved, replicated), None
    )
  finally:
    ckpts.close()
  return ml_collections.ConfigDict(saved), model_of(saved), state, step


def evaluate_loaded(
  config, model, state, step: int, workdir: str, name: str, overrides: dict[str, Any] | None = None
) -> dict[int, dict[int, dict]]:
  """{seed: {length: metrics}}; `overrides` change only how it is evaluated."""
  evaluator = train.evaluator_for(config, **(overrides or {}))
  evaluator.check_fits(model.config.block_size)
  results = train.evaluate_seeds(
    evaluator, model, train.eval_params(state), train.seeds_of(config), parallel.data_mesh()
  )  # where load_checkpoint put the params
  for seed, by_length in results.items():
    evaluator.write(by_length, workdir, step, name=f'{name}_seed{seed}')
  return results


def evaluate_checkpoint(
  workdir: str,
  which: str | int = 'latest',
  overrides: dict[str, Any] | None = None,
  verbose: bool = False,
) -> dict[int, dict[int, dict]]:
  """{seed: {length: metrics}} of checkpoint `which` ('latest', 'best' or a step)."""
  if overrides and 'lengths' in overrides:
    overrides = {**overrides, 'lengths': validation.parse_lengths(overrides['lengths'])}
  config, model, state, step = load_checkpoint(workdir, which)
  results = evaluate_loaded(config, model, state, step, workdir, f'checkpoint_{which}', overrides)
  if verbose:
    rows = [
      dict(seed=seed, L=L, **{k: v for k, v in m.items() if not isinstance(v, list)})
      for seed, by_length in results.items()
      for L, m in by_length.items()
    ]
    print(f'{config.model.name} on {config.task}, checkpoint {which} (step {step}):')
    print(markdown_table(rows))
  return results


def inference_scaling(workdir: str, steps: list[int], which: str | int = 'latest') -> dict:
  """Re-evaluates a weight-tied run with each number of inference steps.

  Writes {'step', 'results': {steps: {seed: {length: metrics}}}} to
  inference_eval.json, which the results store reads as kind 'inference'.
  """
  config, model, state, step = load_checkpoint(workdir, which)
  if not model.rung.tied:
    raise ValueError(f'{config.model.name} has distinct blocks: it has no inference-step axis.')
  results = {
    n: evaluate_loaded(config, model, state, step, workdir, f'inference{n}', {'inference_steps': n})
    for n in steps
  }
  out = dict(step=step, results=results)
  workdir_lib.write_json(workdir, workdir_lib.INFERENCE_EVAL, out)
  return out
