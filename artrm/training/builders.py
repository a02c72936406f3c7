"""What a run's config builds: its model config (budget applied), model and evaluator.

Validation builds them too, so their own checks run before any work.
"""

import ml_collections

from artrm.evaluation.evaluators import LengthEvaluator
from artrm.models import ModelConfig, build_model, normalize_budget
from artrm.models.recipe import Recipe


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
  """The run's ModelConfig, with the compute budget applied (paper-spec rule)."""
  mc = ModelConfig.from_mapping(config.model.to_dict())
  return normalize_budget(mc, config.budget) if config.budget else mc


def run_model(config: ml_collections.ConfigDict):
  """The module a run trains: its rung and sizes, and its recipe checked against the rung."""
  return build_model(model_config(config), Recipe.of_config(config))


def evaluator_for(config: ml_collections.ConfigDict, **overrides) -> LengthEvaluator:
  """The run's evaluator: `config.eval`, at its lengths and the train length."""
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
