"""The main job: all seven rungs trained at one small budget, compared side by side,
and the Autoregressive TRM with its input at unit RMS and its carry bounded (the fix of
docs/science.md), so the paper's finding and the fix are in one table.

A CPU-sized version of the paper's comparison: each rung is trained with the
`runlocal` length-generalisation config on one task at train length L, and
evaluated at L and at a longer length. Runs resume like any training run, so
re-running the command after an interruption finishes only what is missing.
"""

import csv
import os
import time

from artrm.configs import length_gen
from artrm.models import RUNGS, block_passes
from artrm.tables import markdown_table
from artrm.training import train

TRAIN_LENGTH = 8
LONGER_LENGTH = 12
# 12 block passes: the nested rungs run 2 steps of H 2 x (L 2 + 1) passes, so
# ut_level2 (ACT over steps) and trm (Q-head) are different functions; at
# runlocal's 6 they have one step each and are the same function.
BUDGET = 12
# Twice runlocal's passes per step: 300 steps keep the job under 10 minutes on 2 cores.
STEPS = 300
# Row name -> (rung, recipe switches): the seven rungs as the paper trains them, then the fix.
ROWS = {
  **{name: (name, {}) for name in RUNGS},
  'trm+norms': ('trm', {'input_norm': True, 'carry_norm': True}),
}


def ladder_config(name: str, task: str, max_steps: int | None = None, recipe: dict | None = None):
  c = length_gen.get_config(f'model={name},task={task},runlocal')
  c.recipe.update(recipe or {})
  c.train_length = TRAIN_LENGTH
  c.budget = BUDGET
  c.eval.lengths = (TRAIN_LENGTH, LONGER_LENGTH)
  c.log.progress_bar = False
  c.max_steps = max_steps or STEPS
  c.eval.every_steps = c.max_steps
  return c


def run_ladder(
  workdir: str,
  task: str = 'copy',
  max_steps: int | None = None,
  rows_run: tuple[str, ...] = tuple(ROWS),
) -> list[dict]:
  rows = []
  for row_name in rows_run:
    name, recipe = ROWS[row_name]
    rung = RUNGS[name]
    config = ladder_config(name, task, max_steps, recipe)
    start = time.perf_counter()
    out = train.train_and_evaluate(config, os.path.join(workdir, row_name))
    mc = out['model'].config
    row = dict(
      rung=row_name,
      model=rung.title + (' + ' + ', '.join(recipe) if recipe else ''),
      passes=block_passes(mc),
      shape=f'{mc.n_layer}x{mc.n_outer_loops}x{mc.n_inner_loops}'
      if rung.nested
      else str(mc.n_layer),
      minutes=(time.perf_counter() - start) / 60,
    )
    (by_length,) = out['eval'].values()  # one seed
    for L in (TRAIN_LENGTH, LONGER_LENGTH):
      row[f'seq_acc@{L}'] = by_length[L]['seq_acc']
      row[f'char_acc@{L}'] = by_length[L]['char_acc']
    rows.append(row)
    print(
      f'{row_name:12s} seq_acc@{TRAIN_LENGTH}={row[f"seq_acc@{TRAIN_LENGTH}"]:.3f} '
      f'({row["minutes"]:.1f} min)',
      flush=True,
    )

  config = ladder_config('gpt', task, max_steps)
  header = (
    f'Seven rungs and the fixed AR-TRM on {task}, trained at L={TRAIN_LENGTH} for {config.max_steps} steps '
    f'(budget {config.budget} block passes, n_embd {config.model.n_embd}, batch '
    f'{config.batch_size}), greedy decoding on {config.eval.n_samples} fixed prompts.'
  )
  table = markdown_table(rows)
  print('\n' + header + '\n\n' + table)
  with open(os.path.join(workdir, 'ladder.md'), 'w') as f:
    f.write(header + '\n\n' + table + '\n')
  with open(os.path.join(workdir, 'ladder.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  return rows
