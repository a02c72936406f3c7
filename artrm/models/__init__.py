"""The seven-rung ladder: one block, one module, one registry.

`artrm.models.config` (sizes, rungs, the budget rule) imports no jax; the
Flax names below load `artrm.models.rungs` on first use, so that tooling
which only names rungs (results, reports) stays light.
"""

import importlib

from artrm.models.config import RUNGS, ModelConfig, Rung, block_passes, get_rung, normalize_budget

_LAZY = {
  'RecursiveLM': 'rungs',
  'build_model': 'rungs',
  'fresh_params': 'rungs',
  'init_params': 'rungs',
  'load_neutral': 'weights',
}


def __getattr__(name: str):
  if name in _LAZY:
    return getattr(importlib.import_module(f'artrm.models.{_LAZY[name]}'), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
