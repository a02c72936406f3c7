"""`artrm eval`: evaluate a saved checkpoint with the config it was trained with."""

import os
from typing import Any

import ml_collections

from artrm import parallel
from artrm import workdir as workdir_lib
from artrm.tables import markdown_table
from artrm.training import builders, checkpointing, train, train_state, validation


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
  model_of = lambda saved: builders.run_model(ml_collections.ConfigDict(saved))
  replicated = parallel.replicated(parallel.data_mesh())
  ckpts = checkpointing.RunCheckpoints(workdir, create=False)
  try:
    if ckpts.resolve_step(which) is None:
      raise FileNotFoundError(
        f'No {which} checkpoint in {workdir}: train there first (artrm train --workdir=...).'
      )
    step, state, saved = ckpts.restore(
      which, lambda saved: train_state.abstract_state(model_of(saved), saved, replicated), None
    )
  finally:
    ckpts.close()
  return ml_collections.ConfigDict(saved), model_of(saved), state, step


def evaluate_loaded(
  config, model, state, step: int, workdir: str, name: str, overrides: dict[str, Any] | None = None
) -> dict[int, dict[int, dict]]:
  """{seed: {length: metrics}}; `overrides` change only how it is evaluated."""
  evaluator = builders.evaluator_for(config, **(overrides or {}))
  evaluator.check_fits(model.config.block_size)
  results = train.evaluate_seeds(
    evaluator,
    model,
    train_state.eval_params(state),
    train_state.seeds_of(config),
    parallel.data_mesh(),
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
  overrides = _parsed(overrides)
  config, model, state, step = load_checkpoint(workdir, which)
  results = evaluate_loaded(config, model, state, step, workdir, f'checkpoint_{which}', overrides)
  if verbose:
    print(f'{config.model.name} on {config.task}, checkpoint {which} (step {step}):')
    print(markdown_table(_table_rows(results)))
  return results


def _parsed(overrides: dict[str, Any] | None) -> dict[str, Any]:
  """Evaluation overrides with command-line lengths ('10', '20') as integers."""
  overrides = dict(overrides or {})
  if 'lengths' in overrides:
    overrides['lengths'] = validation.parse_lengths(overrides['lengths'])
  return overrides


def _table_rows(results: dict[int, dict[int, dict]], **columns) -> list[dict]:
  """A row per (seed, length) of {seed: {length: metrics}}, `columns` first."""
  return [
    dict(**columns, seed=seed, L=L, **{k: v for k, v in m.items() if not isinstance(v, list)})
    for seed, by_length in results.items()
    for L, m in by_length.items()
  ]


def resolve_steps(specs, trained: int) -> list[int]:
  """Inference steps from each spec: a number of steps (8, '8') or a multiple of the
  `trained` steps ('2x', '1.5x')."""
  out = []
  for spec in specs:
    text = str(spec).strip()
    try:
      n = round(float(text[:-1]) * trained) if text.endswith('x') else int(text)
    except ValueError:
      n = 0
    if n < 1:
      raise validation.ConfigError(
        f'inference steps {spec!r}: give numbers of steps >= 1 or multiples of the trained '
        f'{trained}, e.g. --inference_steps=1x,2x,4x.'
      )
    out.append(n)
  return out


def inference_scaling(
  workdir: str,
  steps: list[int | str],
  which: str | int = 'latest',
  overrides: dict[str, Any] | None = None,
  verbose: bool = False,
) -> dict:
  """Re-evaluates a weight-tied run with each number of inference steps (`resolve_steps`:
  '2x' is twice the trained steps; for ACT rungs, the raised maximum); `overrides` change
  the rest of the evaluation as in `evaluate_checkpoint`.

  Writes {'step', 'results': {steps: {seed: {length: metrics}}}, 'inference_passes':
  {steps: block passes per generated token}} to inference_eval.json, which the results
  store reads as kind 'inference'.
  """
  overrides = _parsed(overrides)
  config, model, state, step = load_checkpoint(workdir, which)
  if not model.rung.tied:
    raise ValueError(
      f'{config.model.name} has distinct blocks: it has no inference-step axis; '
      'evaluate it without --inference_steps.'
    )
  steps = resolve_steps(steps, model.rung.default_steps(model.config))
  results = {
    n: evaluate_loaded(
      config, model, state, step, workdir, f'inference{n}', {**overrides, 'inference_steps': n}
    )
    for n in steps
  }
  passes = {n: model.passes_per_forward(n) for n in steps}
  out = dict(step=step, results=results, inference_passes=passes)
  workdir_lib.write_json(workdir, workdir_lib.INFERENCE_EVAL, out)
  if verbose:
    print(f'{config.model.name} on {config.task}, checkpoint {which} (step {step}):')
    rows = [
      row
      for n, by_seed in results.items()
      for row in _table_rows(by_seed, inference_steps=n, inference_passes=passes[n])
    ]
    print(markdown_table(rows))
  return out
