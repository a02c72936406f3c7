"""The benchmark setups: the paper-comparison table's model sizes, batches and lengths.

`small` and `paper` train on addition at L = 10, whose rows the model reads as 33
tokens (the example without its closing newline); the paper's code pads rows to
block_size, so both token counts are kept. `eval` decodes at L = 10 and 50. Each rung runs under the paper's training config
(`length_gen.base_config`) with the setup's sizes, one seed unless `num_seeds` says more.
"""

import dataclasses

from artrm.configs import length_gen


@dataclasses.dataclass(frozen=True)
class Setup:
  """One benchmark setting; `train=False` measures decoding only."""

  name: str
  n_embd: int
  n_head: int
  budget: int
  batch_size: int
  block_size: int
  train: bool = True
  eval_lengths: tuple[int, ...] = ()
  eval_batch: int = 100
  task: str = 'addition'
  train_length: int = 10
  dropout: float = 0.1
  remat: str | None = None  # model.remat; None: the training config's
  dtype: str | None = None  # model.dtype; None: the training config's (float32)
  num_seeds: int = 1  # seeds vmapped in one step

  def replace(self, **overrides) -> 'Setup':
    """A copy with the overrides that are not None (unset CLI flags)."""
    return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


SETUPS = {
  'small': Setup('small', n_embd=128, n_head=4, budget=12, batch_size=32, block_size=34),
  'paper': Setup('paper', n_embd=384, n_head=6, budget=24, batch_size=64, block_size=180),
  'eval': Setup(
    'eval',
    n_embd=128,
    n_head=4,
    budget=12,
    batch_size=32,
    block_size=180,
    train=False,
    eval_lengths=(10, 50),
  ),
}


def get_setup(name: str) -> Setup:
  if name not in SETUPS:
    raise ValueError(f'Unknown benchmark setup {name!r}; choose one of {list(SETUPS)}.')
  return SETUPS[name]


def run_config(setup: Setup, rung: str):
  """The training config of `rung` under `setup`: the paper's base config, `num_seeds` seeds."""
  c = length_gen.base_config()
  c.model.update(
    name=rung,
    n_embd=setup.n_embd,
    n_head=setup.n_head,
    block_size=setup.block_size,
    dropout=setup.dropout,
  )
  if setup.remat is not None:
    c.model.remat = setup.remat
  if setup.dtype is not None:
    c.model.dtype = setup.dtype
  c.update(
    task=setup.task,
    train_length=setup.train_length,
    batch_size=setup.batch_size,
    budget=setup.budget,
    num_seeds=setup.num_seeds,
  )
  return c
