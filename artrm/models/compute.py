"""Compute accounting: block passes per forward, and the paper's budget rule.

The paper equalises rungs by block passes (applications of the shared block
in one forward pass), not by parameters or FLOPs; `normalize_budget` is its
`--compute-budget` rule, fallback order included (paper-spec "Compute
normalisation").
"""

import dataclasses
import logging

from artrm.models.config import ModelConfig
from artrm.models.rungs import get_rung


def passes_per_step(config: ModelConfig) -> int:
  rung = get_rung(config.name)
  if rung.stream == 'single':
    return 1
  H, L = (config.n_outer_loops, config.n_inner_loops) if rung.nested else (1, 1)
  return H * (L + 1)


def block_passes(config: ModelConfig, steps: int | None = None) -> int:
  """Passes of a forward that runs every step (`steps` defaults to trained)."""
  return passes_per_step(config) * (steps or get_rung(config.name).default_steps(config))


def nested_candidates(H0: int, L0: int) -> list[tuple[int, int]]:
  """(H0, L0) first, then L from L0 down to 0 (outer) x H from H0 down to 1."""
  rest = [(H, L) for L in range(L0, -1, -1) for H in range(H0, 0, -1) if (H, L) != (H0, L0)]
  return [(H0, L0)] + rest


def normalize_budget(config: ModelConfig, budget: int) -> ModelConfig:
  """Returns `config` with n_layer (and H, L for nested rungs) set for `budget`.

  The config's n_outer_loops / n_inner_loops are the (H0, L0) start.
  """
  rung = get_rung(config.name)
  if budget < 1:
    raise ValueError(f'compute budget must be a positive number of block passes, got {budget}.')
  if config.max_act_steps and rung.halting != 'none':
    raise ValueError(f'max_act_steps={config.max_act_steps} is set, so the budget rule (which sets '
                     'n_layer = steps) would not hold: set max_act_steps=0 or budget=0.')
  if rung.stream == 'single':
    out = dataclasses.replace(config, n_layer=budget)
  elif not rung.nested:
    out = dataclasses.replace(config, n_layer=max(1, budget // 2))
  else:
    H0, L0 = config.n_outer_loops, config.n_inner_loops
    if H0 < 1 or L0 < 0:
      raise ValueError(f'(H, L) start must have H >= 1 and L >= 0, got ({H0}, {L0}).')
    fallback = None
    for H, L in nested_candidates(H0, L0):
      per_step = H * (L + 1)
      if budget % per_step == 0:
        fallback = (H, L, budget // per_step)
        break
      if fallback is None:
        fallback = (H, L, max(1, budget // per_step))
    H, L, n_layer = fallback
    if L == 0:
      logging.warning('Budget %d resolves %s to L = 0 z-updates: x never enters the model, whose '
                      'output then ignores the tokens (the paper\'s rule, kept as is). Pick a '
                      'budget divisible by 2 or 3.', budget, config.name)
    out = dataclasses.replace(config, n_layer=n_layer, n_outer_loops=H, n_inner_loops=L)
  if block_passes(out) > budget:
    raise ValueError(
        f'No configuration of {config.name} fits a budget of {budget} block passes: its '
        f'smallest step costs {passes_per_step(out)} passes. Raise the budget.')
  return out
