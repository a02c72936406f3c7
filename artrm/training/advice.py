"""What to do after a run stopped on a failure: the remedy, and where the same command resumes.

A stack's messages name its first run's workdir; every run of a stack is at the same step.
"""

import ml_collections

from artrm import workdir as workdir_lib


def after_write_error(workdir: str) -> str:
  """What to do after a failed write: the unfinished checkpoint is gone, the last one stays."""
  steps = workdir_lib.checkpoint_steps(workdir)
  where = f'from its checkpoint at step {max(steps)}' if steps else 'from the start'
  return f'Free space there (or make it writable) and re-run the same command: it resumes {where}.'


def after_divergence(config: ml_collections.ConfigDict, workdir: str) -> str:
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
