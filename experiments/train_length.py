"""Train-length scaling: every rung on addition trained at L = 2, 5, 10, 20, 40 (budget 24).

  artrm suite --suite=experiments/train_length.py --root=workdirs/train_length
  artrm suite --suite=experiments/train_length.py:runlocal --root=workdirs/train_length_cpu
"""

from artrm.configs import common, length_gen
from artrm.models import RUNGS


def get_config(arg=None):
  a = common.parse_arg(arg, runlocal=False, seeds=3)
  c = length_gen.get_config('task=addition' + (',runlocal' if a.runlocal else ''))
  c.num_seeds = a.seeds
  return c


def get_sweep(arg=None):
  lengths = (2, 5) if 'runlocal' in (arg or '') else (2, 5, 10, 20, 40)
  return [{'model.name': name, 'train_length': n, 'eval.lengths': (n,)}
          for n in lengths for name in RUNGS]
