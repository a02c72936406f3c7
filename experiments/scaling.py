"""Parameter and inference scaling: every rung on addition at widths 192/384 and budgets 12/24.

Trained 4000 steps at L = 10, evaluated at 10, 20, 30; then the weight-tied
rungs are re-evaluated with more inference steps:
  artrm suite --suite=experiments/scaling.py --root=workdirs/scaling
  artrm suite --suite=experiments/scaling.py --root=workdirs/scaling --inference_sweep=12,24,48
  artrm suite --suite=experiments/scaling.py:runlocal --root=workdirs/scaling_cpu
"""

from artrm.configs import length_gen
from artrm.models import RUNGS


def get_config(arg=None):
  c, a = length_gen.suite_config(arg)
  c.eval.lengths = (10, 20, 30)
  c.max_steps = 400 if a.runlocal else 4000
  return c


def get_sweep(arg=None):
  local = 'runlocal' in (arg or '')
  widths, budgets = ((32, 64), (6, 12)) if local else ((192, 384), (12, 24))
  return [
    {'model.name': name, 'model.n_embd': w, 'model.n_head': max(1, w // 64), 'budget': b}
    for w in widths
    for b in budgets
    for name in RUNGS
  ]
