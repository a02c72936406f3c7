"""The search for a CPU form in which addition is learned (the reference rows).

`why_trm.py`'s CPU form (64 wide, 400 steps, train L 5, the paper's constant
lr 3e-4) leaves every rung near chance on addition, so addition cannot rank
its rows. This suite trains the two reference rows, `gpt` and `ut_level1`, on
addition over a few settings of the levers that cost CPU time (train length,
width, steps, batch) with one lr schedule for all (warmup then cosine to 0),
and reports char_acc and seq_acc at the training length with 3 seeds each.
The smallest setting at which both reach char_acc >= 0.9 becomes the study
form (`why_trm.py:addform`).

  python -m artrm suite --suite=experiments/addition_form.py --root=workdirs/addition_form --slots=2
  python experiments/addition_form.py workdirs/addition_form workdirs/why_trm_add

The second command writes the search table: per setting and reference row,
char_acc and seq_acc at the training length (mean ± sem over seeds, n), the
minutes the run took (wall clock, two runs at a time on 2 cores), and for a
run stopped early, the step of its last evaluation.

Arguments: `seeds=N`, `steps=N` (every setting's steps), `rows=N` (the first N settings).
"""

import glob
import os
import sys

import numpy as np

from artrm import workdir as workdir_lib
from artrm.configs import length_gen
from artrm.tables import markdown_table
from artrm.tools import report_tables, suites

# (train length, width, steps, batch, lr, schedule): the settings, cheapest first.
SETTINGS = (
  (3, 64, 2000, 32, 1e-3, 'warmup_cosine'),
  (3, 64, 1500, 32, 3e-3, 'warmup_cosine'),
  (3, 64, 3000, 32, 1e-3, 'warmup_cosine'),
  (4, 64, 3000, 32, 3e-3, 'warmup_cosine'),
  (3, 64, 2000, 32, 3e-4, 'constant'),
)
REFERENCES = ('gpt', 'ut_level1')


def get_config(arg=None):
  c, _ = parsed(arg)
  return c


def parsed(arg):
  c, a = length_gen.suite_config(arg, rows=0)
  c = length_gen.make_runlocal(c)
  c.budget = 12  # why_trm's CPU form: trm runs 2 steps of 2 x (2 + 1) passes
  c.optimizer.warmup_steps = 100
  return c, a


def setting(L, width, steps, batch, lr, schedule, seeds_steps=0) -> dict:
  steps = seeds_steps or steps
  return {
    'train_length': L,
    'model.n_embd': width,
    'max_steps': steps,
    'batch_size': batch,
    'optimizer.learning_rate': lr,
    'optimizer.schedule': schedule,
    'eval.lengths': (L,),
    'eval.every_steps': steps // 10,
  }


def get_sweep(arg=None):
  _, a = parsed(arg)
  picked = suites.pick_rows(SETTINGS, a.rows)
  return [
    {'model.name': name, 'task': 'addition', **setting(*s, seeds_steps=a.steps)}
    for s in picked
    for name in REFERENCES
  ]


def _cell(records: list[dict], key: str) -> str:
  """mean ± sem (n) of `key` over the records (one per seed)."""
  v = np.array([r[key] for r in records])
  return report_tables.sem_cell(v.mean(), v.std(ddof=1) / np.sqrt(len(v)), len(v))


def search_table(roots: list[str]) -> str:
  """The search as a markdown table, from the reference rows' workdirs under `roots`."""
  rows = []
  paths = [
    p for root in roots for p in sorted(glob.glob(os.path.join(root, '*', workdir_lib.CONFIG)))
  ]
  for config_path in paths:
    wd = os.path.dirname(config_path)
    c = workdir_lib.read_config(wd)
    if c['model']['name'] not in REFERENCES or c['task'] != 'addition':
      continue
    final = workdir_lib.read_final_eval(wd)
    evals = workdir_lib.read_metrics(wd, 'eval')
    if not evals:
      continue
    step = final['step'] if final else max(r['step'] for r in evals)
    last = [r for r in evals if r['step'] == step]
    opt = c['optimizer']
    start = os.path.getmtime(config_path)
    end = os.path.getmtime(workdir_lib.path(wd, workdir_lib.FINAL_EVAL)) if final else None
    rows.append(
      {
        'train L': c['train_length'],
        'width': c['model']['n_embd'],
        'steps': c['max_steps'] if final else f'{c["max_steps"]} (stopped at {step})',
        'batch': c['batch_size'],
        'lr': f'{opt["learning_rate"]:g} {opt.get("schedule", "constant")}',
        'row': c['model']['name'],
        'char_acc': _cell(last, f'L{c["train_length"]}/char_acc'),
        'seq_acc': _cell(last, f'L{c["train_length"]}/seq_acc'),
        'minutes': f'{(end - start) / 60:.1f}' if end else '–',
      }
    )
  return markdown_table(rows)


if __name__ == '__main__':
  print(search_table(sys.argv[1:]))
