"""Compute-optimal widths: every rung on addition at n_embd 128..512, budget 24, (H, L) = (1, 2).

artrm suite --suite=experiments/compute_optimal.py --root=workdirs/compute_optimal
artrm suite --suite=experiments/compute_optimal.py:runlocal --root=workdirs/compute_optimal_cpu
"""

from artrm.configs import length_gen
from artrm.models import RUNGS


def get_config(arg=None):
  c, a = length_gen.suite_config(arg)
  c.model.update(n_outer_loops=1, n_inner_loops=2, block_size=120)
  c.eval.lengths = (10, 11, 15, 20)
  c.max_steps = 400 if a.runlocal else 15000
  return c


def get_sweep(arg=None):
  widths = (32, 64) if 'runlocal' in (arg or '') else (128, 256, 384, 512)
  return [
    {'model.name': name, 'model.n_embd': w, 'model.n_head': max(1, w // 64)}
    for w in widths
    for name in RUNGS
  ]
