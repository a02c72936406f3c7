"""The checks a training config passes before any compile or write.

Each refusal is one line naming the field, its value and what it may be, so a
typo costs seconds, not a run's first checkpoint interval.
"""

import math
from typing import Any

import ml_collections

from artrm import parallel
from artrm.data import get_task
from artrm.evaluation.decoding import DECODINGS, check_fits
from artrm.models.config import get_rung
from artrm.models.recipe import Recipe
from artrm.training import builders

# Metrics the best checkpoint may be picked by: present at every length
# (`artrm.evaluation.metrics.answer_metrics`).
BEST_METRICS = ('seq_acc', 'char_acc', 'first_char_acc', 'last_char_acc')


# optimizer.schedule: the paper's constant lr, or warmup then cosine (`train_state.learning_rate`).
SCHEDULES = ('constant', 'warmup_cosine')


class ConfigError(ValueError):
  pass


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _at_least(low: int):
  return lambda v: _is_int(v) and v >= low, f'an integer >= {low}'


def _number(low: float, high: float = math.inf, *, open_low: bool = False, open_high: bool = False):
  open_high = open_high or high == math.inf
  above = lambda v: v > low if open_low else v >= low
  below = lambda v: v < high if open_high else v <= high
  ok = lambda v: (
    isinstance(v, (int, float))
    and not isinstance(v, bool)
    and math.isfinite(v)
    and above(v)
    and below(v)
  )
  bounds = f'{"(" if open_low else "["}{low:g}, {high:g}{")" if open_high else "]"}'
  return ok, f'a finite number in {bounds}'


def _one_of(choices):
  return lambda v: v in choices, f'one of {sorted(choices)}'


def _lengths(v) -> bool:
  return isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_int(L) and L >= 1 for L in v)


_CHECKS = {
  'seed': (_is_int, 'an integer'),
  'num_seeds': _at_least(1),
  'train_length': _at_least(1),
  'train_length_min': _at_least(0),
  'train_seq_len': _at_least(0),
  'batch_size': _at_least(1),
  'max_steps': _at_least(1),
  'budget': _at_least(0),
  'optimizer.learning_rate': _number(0, open_low=True),
  'optimizer.b1': _number(0, 1, open_high=True),
  'optimizer.b2': _number(0, 1, open_high=True),
  'optimizer.eps': _number(0),
  'optimizer.weight_decay': _number(0),
  'optimizer.grad_clip_norm': _number(0),
  'optimizer.schedule': _one_of(SCHEDULES),
  'optimizer.warmup_steps': _at_least(0),
  'optimizer.embed_lr_mult': _number(0, open_low=True),
  'eval.lengths': (_lengths, 'a non-empty tuple of integers >= 1'),
  'eval.every_steps': _at_least(1),
  'eval.n_samples': _at_least(1),
  'eval.batch_size': _at_least(1),
  'eval.decoding': _one_of(DECODINGS),
  'eval.inference_steps': _at_least(0),
  'checkpoint.every_steps': _at_least(0),
  'checkpoint.max_to_keep': _at_least(0),
  'checkpoint.best_metric': _one_of(BEST_METRICS),
  'log.every_steps': _at_least(1),
}


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
  for name in key.split('.'):
    config = config[name]
  return config


def validate(config: ml_collections.ConfigDict):
  """Every part's checks, before any compile or write. Each part keeps its rule in its own
  module: the fields and lengths (`check_config`), the recipe against its rung
  (`Recipe.check`), the model's shapes (`ModelConfig`), the evaluated lengths against the
  budgeted model's block_size (`LengthEvaluator.check_fits`), the batch against the devices
  (`parallel.check_batch_divisible`)."""
  check_config(config)
  block_size = builders.model_config(config).block_size
  builders.evaluator_for(config).check_fits(block_size)
  parallel.check_batch_divisible(config.batch_size, parallel.data_mesh())


def check_config(config: ml_collections.ConfigDict):
  """Raises on the first field out of range (model shapes: `ModelConfig`, the trainer)."""
  get_task(config.task)  # their errors name the known ones
  get_rung(config.model.name)
  recipe = Recipe.of_config(config).check(config.model.name)
  if recipe.mixer == 'mlp' and config.eval.kv_cache:
    raise ConfigError(
      'config.recipe.mixer=mlp has no KV cache to decode with: set --config.eval.kv_cache=False.'
    )
  for key, (ok, allowed) in _CHECKS.items():
    value = _get(config, key)
    if not ok(value):
      raise ConfigError(f'config.{key}={value!r}: must be {allowed}.')
  check_lengths(config)


def check_lengths(config: ml_collections.ConfigDict):
  """The training and evaluation lengths against model.block_size, the shortest training
  length against the longest, and, for abacus positions, the digit indices evaluation
  reads against those training reaches with its offsets, and a count-down against the
  task."""
  task, L, block_size = get_task(config.task), config.train_length, config.model.block_size
  if not 0 <= config.train_length_min <= L:
    raise ConfigError(
      f'config.train_length_min={config.train_length_min}: must be 0 (every row at '
      f'train_length) or in 1..train_length={L}.'
    )
  if task.seq_len(L) > block_size:
    raise ConfigError(
      f'{config.task} at train_length={L} needs {task.seq_len(L)} positions but '
      f'model.block_size={block_size}: raise model.block_size to {task.seq_len(L)}.'
    )
  padded = config.get('train_seq_len', 0)  # absent from configs saved before it
  if padded and not task.seq_len(L) <= padded <= block_size:
    raise ConfigError(
      f'config.train_seq_len={padded}: {config.task} at train_length={L} needs '
      f'{task.seq_len(L)} to {block_size} (model.block_size) positions, or 0 (its shortest row).'
    )
  for length in config.eval.lengths:
    check_fits(
      block_size,
      task.prompt_len(length),
      task.answer_len(length),
      f'{config.task} at length {length}',
    )
  # The longest run of digits is the answer's (addition: L + 1 digits); with
  # abacus_separator the token after it reads one more.
  gap, sep = config.model.get('abacus_max_gap', 1), int(config.model.get('abacus_separator', 0))
  trained = (task.answer_len(L) + sep) * gap
  reach = trained + config.model.get('abacus_max_offset', 0)
  longest = max(task.answer_len(length) for length in config.eval.lengths) + sep
  if config.model.get('pos_encoding') == 'abacus' and longest > reach:
    raise ConfigError(
      f'config.model.abacus_max_offset={config.model.abacus_max_offset}: evaluating '
      f'{config.task} at length {max(config.eval.lengths)} reads digit index {longest}, but '
      f'training reaches {reach}: raise model.abacus_max_offset to {longest - trained}.'
    )
  if config.model.get('abacus_count_down') and (task.n_operands > 1 or task.extra_answer_digits):
    raise ConfigError(
      f'config.model.abacus_count_down counts a run down from the length of the run before '
      f'it, which suits one operand and an answer as long (copy, reverse); {config.task} '
      'has more: set it False.'
    )


def parse_lengths(lengths) -> list[int]:
  """Eval lengths from the command line ('10', '20', ...) as integers >= 1."""
  try:
    out = [int(L) for L in lengths]
  except (TypeError, ValueError):
    out = []
  if not out or min(out) < 1:
    raise ConfigError(
      f'lengths={",".join(map(str, lengths))}: must be integers >= 1, e.g. --lengths=10,20.'
    )
  return out
