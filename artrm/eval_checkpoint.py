"""`artrm eval`: evaluate a saved checkpoint with the config it was trained with."""

import json
import os
from typing import Any

import jax
import ml_collections

from artrm import checkpointing, parallel, train
from artrm.models import build_model
from artrm.tables import markdown_table


def evaluate_checkpoint(workdir: str, which: str | int = 'latest',
                        overrides: dict[str, Any] | None = None, verbose: bool = False
                        ) -> dict[int, dict[int, dict]]:
  """{seed: {length: metrics}} of checkpoint `which` ('latest', 'best' or a step).

  The model comes from the checkpoint's own config; `overrides` change only
  how it is evaluated (lengths, n_samples, decoding, inference_steps, ...).
  """
  ckpts = checkpointing.RunCheckpoints(workdir)
  try:
    saved = ckpts.saved_config(which)
    if saved is None:
      raise FileNotFoundError(f'No {which} checkpoint in {workdir}: train there first '
                              '(artrm train --workdir=...).')
    config = ml_collections.ConfigDict(saved)
    model = build_model(train.model_config(config))
    evaluator = train.evaluator_for(config, **(overrides or {}))
    evaluator.check_fits(model.config.block_size)
    replicated = parallel.replicated(parallel.data_mesh())
    seeds = train.seeds_of(config)
    abstract = jax.eval_shape(
        lambda: train.init_seeds(model, train.make_optimizer(config.optimizer), seeds))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                            abstract)
    step, state = ckpts.restore(which, abstract, saved)
  finally:
    ckpts.close()
  results = train.evaluate_seeds(evaluator, model, state.params, seeds)
  for seed, by_length in results.items():
    evaluator.write(by_length, workdir, step, name=f'checkpoint_{which}_seed{seed}')
  if verbose:
    rows = [dict(seed=seed, L=L, **{k: v for k, v in m.items() if not isinstance(v, list)})
            for seed, by_length in results.items() for L, m in by_length.items()]
    print(f'{config.model.name} on {config.task}, checkpoint {which} (step {step}):')
    print(markdown_table(rows))
  return results
