"""The length suite's answer as tables: seq_acc (char_acc) by evaluation length per rung and
position encoding, the recursive rungs against `gpt` on the same encoding at 2L, and the
test-time depth (inference steps) at 2L.

  python experiments/length_table.py workdirs/length_beyond_cpu workdirs/length_beyond_cpu_learned > results/studies/length_beyond_cpu.md
  python experiments/length_table.py workdirs/length_beyond_cpu_add3 > results/studies/length_beyond_cpu_add3.md
  python experiments/length_table.py workdirs/length_beyond_add3_fixed > results/studies/length_beyond_add3_fixed.md
  python experiments/length_table.py workdirs/length_beyond_add3_var > results/studies/length_beyond_add3_var.md
  python experiments/length_table.py workdirs/length_beyond_add3_fixed_4k > results/studies/length_beyond_add3_fixed_4k.md
"""

import sys

import pandas as pd

from artrm.tables import markdown_table
from artrm.tools import report_tables, results


def cell(values: pd.Series) -> str:
  """mean ± sem (n) of one group's seeds, as the report writes it; '–' for a run not run."""
  if values.empty:
    return '–'
  stats = report_tables.seed_stats(values.to_frame('value').assign(group=0), ['group'])
  return report_tables.sem_cell(*stats[['mean', 'sem', 'n']].iloc[0])


def main(roots: list[str]):
  df = pd.DataFrame([r for root in roots for r in results.gather(root)], columns=results.COLUMNS)
  final = df[(df['kind'] == 'final') & df['metric'].isin(['seq_acc', 'char_acc'])]
  L = int(final['train_length'].iloc[0])
  shortest = int(final['train_length_min'].fillna(0).max())
  seen = f'lengths {shortest}..{L}' if shortest else f'length {L}'
  keys = ['task', 'model', 'pos_encoding']
  by_length = []
  for key, g in final.groupby(keys, sort=False):
    row = dict(zip(keys, key))
    for length, h in g.groupby('eval_length'):
      seq, char = (h[h['metric'] == m]['value'] for m in ('seq_acc', 'char_acc'))
      row[f'L={length}'] = f'{cell(seq)} ({char.mean():.3f})'
    by_length.append(row)
  at_2L = final[(final['eval_length'] == 2 * L) & (final['metric'] == 'seq_acc')]
  versus = []
  for (task, enc), g in at_2L.groupby(['task', 'pos_encoding']):
    gpt = g[g['model'] == 'gpt']['value'].to_numpy()
    for model, h in g[g['model'] != 'gpt'].groupby('model'):
      if len(gpt):
        x = h['value'].to_numpy()
        diff = report_tables.welch_difference(x, gpt)
        versus.append(dict(task=task, pos_encoding=enc, row=model, **{'seq_acc - gpt': diff}))
  inference = df[
    (df['kind'] == 'inference') & (df['metric'] == 'seq_acc') & (df['eval_length'] == 2 * L)
  ]
  depth = []
  for key, g in inference.groupby(keys, sort=False):
    row = dict(zip(keys, key))
    trained = g['inference_steps'].min()
    for steps, h in g.groupby('inference_steps'):
      row[f'{steps / trained:g}x'] = f'{cell(h["value"])} at {int(steps)}'
    depth.append(row)
  sections = [
    ('## By evaluation length', by_length),
    (f'## At 2L = {2 * L}: each rung against `gpt` on the same encoding (Welch 95% CI)', versus),
    (
      f'## Test-time depth at 2L = {2 * L}: seq_acc by inference steps\n\n'
      'Multiples of the trained steps, each cell with its steps; for ACT rungs the raised maximum.',
      depth,
    ),
  ]
  lines = [
    '# Beyond the training length, CPU form: 3 seeds',
    '',
    f'    python experiments/length_table.py {" ".join(roots)}',
    '',
    f'Trained on {seen}; seq_acc mean ± sem over seeds (n), char_acc mean in brackets;',
    'greedy decoding on 64 fixed prompts per length.',
    '',
  ]
  for title, rows in sections:
    if rows:  # a suite of gpt alone has no contrasts, one without recursion no depth
      lines += [title, '', markdown_table(rows), '']
  print('\n'.join(lines))


if __name__ == '__main__':
  main(sys.argv[1:])
