"""Length generalisation, the paper's main result: 7 rungs x 3 tasks at budget 24.

Train at L = 10, evaluate at 10..50; 3 seeds per run (vmapped, one program).
  paper scale: artrm suite --suite=experiments/length_gen.py --root=workdirs/length_gen
  CPU form:    artrm suite --suite=experiments/length_gen.py:runlocal --root=workdirs/length_gen_cpu
  report:      artrm report --root=workdirs/length_gen_cpu --out=results/studies/length_gen_cpu
Arguments besides `runlocal`, `seeds=N`, `dtype=...`, `steps=N`: `only=addition` or
`only=addition+copy` (those tasks' rows of the table, in the suite's order).
The CPU form trains a 64-wide, 4-head model at budget 6 for 400 steps (batch 32) on
L = 5 and evaluates 64 prompts at 5 and 10 every 200 steps (docs/experiments.md lists
every change from the paper's form).
"""

from artrm.configs import length_gen
from artrm.models import RUNGS

TASKS = ('addition', 'copy', 'reverse')


def get_config(arg=None):
  c, a = length_gen.suite_config(arg, only='')
  if a.runlocal:
    c.model.dropout = 0.1  # the paper's (runlocal turns it off)
    c.train_length = 5
    c.eval.lengths = (5, 10)
  return c


def get_sweep(arg=None):
  _, a = length_gen.suite_config(arg, only='')
  only = a.only.split('+') if a.only else TASKS
  if set(only) - set(TASKS):
    raise ValueError(f'only={a.only}: tasks are {"+".join(TASKS)}, e.g. only=addition+copy.')
  return [{'task': task, 'model.name': name} for task in TASKS if task in only for name in RUNGS]
