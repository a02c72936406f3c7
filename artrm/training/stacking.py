"""Stacks: runs of one rung and settings that differ only in task and seed, trained as one
program.

At small widths a step's kernels are too small to fill an accelerator, and a step costs its
kernel count times the launch latency; runs in flight side by side share it badly. A stack
concatenates its runs' seed-stacked states on the seed axis and vmaps the step over all of
them, each member with its own task index (`train_step.make_step_fn`), so one kernel does
every run's work. Each run keeps its own workdir (metrics, checkpoints, best, evaluations),
exactly as if it had trained alone, and its slice of the stack is that run trained alone
(tests/test_stacking.py). Runs whose tasks have rows of different lengths need one
`train_seq_len` that fits them all (the paper pads every row to block_size).
"""

import os

import jax
import jax.numpy as jnp
import ml_collections

from artrm.data import TASKS, get_task, same_layout
from artrm.training import checkpointing
from artrm.training.validation import ConfigError

# What may differ between the runs of a stack: everything else is one program's.
PER_RUN = ('task', 'seed', 'num_seeds')


def check_stackable(configs: list[ml_collections.ConfigDict], workdirs: list[str]):
  """Raises, naming the fix, unless the runs can train as one program."""
  if len(set(map(os.path.realpath, workdirs))) != len(workdirs):
    raise ConfigError('Two runs of the stack share a workdir: give each run its own.')
  first = configs[0].to_dict()
  for config in configs[1:]:
    differ = list(checkpointing.changed_fields(first, config.to_dict(), ignore=PER_RUN))
    if differ:
      raise ConfigError(
        f'Runs of a stack may differ only in {", ".join(PER_RUN)}, but these differ: '
        f'{", ".join(differ)}. Train them apart (artrm suite --stack=off).'
      )
  lengths = row_lengths(configs)
  if len(set(lengths.values())) > 1 and not configs[0].get('train_seq_len', 0):
    raise ConfigError(
      f"The stack's tasks have rows of different lengths ({lengths}): set "
      f'--config.train_seq_len={max(lengths.values())} on every run (rows padded, the '
      'padding out of the loss), or stack runs of one layout (artrm suite --stack=layout).'
    )


def pad_rows(configs: list[ml_collections.ConfigDict]):
  """Sets every run's `train_seq_len` to the stack's longest row, where their rows differ."""
  lengths = set(row_lengths(configs).values())
  if len(lengths) > 1:
    for c in configs:
      c.train_seq_len = max(lengths)


def row_lengths(configs: list[ml_collections.ConfigDict]) -> dict[str, int]:
  """{task: its shortest training row} of the stack's runs."""
  return {c.task: get_task(c.task).seq_len(c.train_length) for c in configs}


def seq_len(configs: list[ml_collections.ConfigDict]) -> int:
  """The length of the stack's training rows: `train_seq_len`, else its longest task's."""
  return configs[0].get('train_seq_len', 0) or max(row_lengths(configs).values())


def stack_tasks(configs: list[ml_collections.ConfigDict]) -> tuple[str, ...]:
  """The tasks the stack's step samples from, in `TASKS` order: the layouts of its runs'
  tasks (for one run, the tasks its program shares with others of its layout)."""
  wanted = {name for c in configs for name in same_layout(c.task)}
  return tuple(name for name in TASKS if name in wanted)


def member_slices(configs: list[ml_collections.ConfigDict]) -> list[slice]:
  """Each run's seeds on the stack's seed axis."""
  ends = [0]
  for c in configs:
    ends.append(ends[-1] + c.num_seeds)
  return [slice(a, b) for a, b in zip(ends, ends[1:])]


def concat(states: list):
  """Seed-stacked states, one per run, as one stack."""
  return jax.tree.map(lambda *xs: jnp.concatenate(xs), *states) if len(states) > 1 else states[0]


@jax.jit
def _take(tree, index):
  return jax.tree.map(lambda x: x[index], tree)


def run_slice(tree, members: slice, size: int):
  """A run's part of a stacked tree (state, params); the tree itself for a stack of one."""
  if members.stop - members.start == size:
    return tree
  return _take(tree, jnp.arange(members.start, members.stop))
