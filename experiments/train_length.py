"""Train-length scaling: every rung on addition trained at L = 2, 5, 10, 20, 40 (budget 24).

artrm suite --suite=experiments/train_length.py --root=workdirs/train_length
artrm suite --suite=experiments/train_length.py:runlocal --root=workdirs/train_length_cpu
"""

from artrm.configs import length_gen
from artrm.models import RUNGS


def get_config(arg=None):
  return length_gen.suite_config(arg)[0]


def get_sweep(arg=None):
  lengths = (2, 5) if 'runlocal' in (arg or '') else (2, 5, 10, 20, 40)
  return [
    {'model.name': name, 'train_length': n, 'eval.lengths': (n,)} for n in lengths for name in RUNGS
  ]
