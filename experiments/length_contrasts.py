"""Runs of several length-suite roots compared at one evaluation length: each run's
char_acc and seq_acc (mean ± sem over seeds) and Welch 95% CIs of named differences.
The roots share run names (a `fixed` root and a variable-length one), so a run is
named `root_suffix/run`. The default is the take-apart of why `gpt` does not learn
`addition_rev` at L = 3 (docs/length.md):

  python experiments/length_contrasts.py > results/studies/length_beyond_add3_contrasts.md
"""

import sys

from length_table import cell  # mean ± sem (n), as every table here writes it
import pandas as pd

from artrm.tables import markdown_table
from artrm.tools import report_tables, results

GPT_ABACUS = 'name=gpt,pos_encoding=abacus,abacus_max_offset=12'
TRM_ABACUS = 'name=trm,carry_norm=True,input_scale=36.0,pos_encoding=abacus,abacus_max_offset=12'
ROWS = {
  'addition, learned, fixed': 'fixed/task=addition,name=gpt,pos_encoding=learned',
  'addition, abacus, fixed': f'fixed/task=addition,{GPT_ABACUS}',
  'addition_rev, learned, fixed': 'fixed/task=addition_rev,name=gpt,pos_encoding=learned',
  'addition_rev, abacus, fixed': f'fixed/task=addition_rev,{GPT_ABACUS}',
  'addition_rev, learned, 1..L': 'var/task=addition_rev,name=gpt,pos_encoding=learned',
  'addition_rev, abacus, 1..L': f'var/task=addition_rev,{GPT_ABACUS}',
  'addition_rev, abacus, fixed, 4000 steps': f'fixed_4k/task=addition_rev,{GPT_ABACUS}',
  'trm: addition_rev, abacus, fixed, 4000 steps': f'fixed_4k/task=addition_rev,{TRM_ABACUS}',
}
CONTRASTS = [
  ('addition, learned, fixed', 'addition, abacus, fixed'),
  ('addition, learned, fixed', 'addition_rev, learned, fixed'),
  ('addition_rev, learned, fixed', 'addition_rev, learned, 1..L'),
  ('addition_rev, abacus, fixed', 'addition_rev, abacus, 1..L'),
  ('trm: addition_rev, abacus, fixed, 4000 steps', 'addition_rev, abacus, fixed, 4000 steps'),
]


def main(prefix: str = 'workdirs/length_beyond_add3_', length: int = 3):
  roots = {run.split('/')[0] for run in ROWS.values()}
  df = pd.DataFrame(
    [{**r, 'run': f'{root}/{r["run"]}'} for root in roots for r in results.gather(prefix + root)]
  )
  at_L = df[(df['kind'] == 'final') & (df['eval_length'] == length)]
  values = lambda row, metric: at_L[(at_L['run'] == ROWS[row]) & (at_L['metric'] == metric)][
    'value'
  ]
  table = [
    {'row': row, 'char_acc': cell(values(row, 'char_acc')), 'seq_acc': cell(values(row, 'seq_acc'))}
    for row in ROWS
  ]
  diffs = [
    {
      'A - B': f'{a} - {b}',
      **{
        m: report_tables.welch_difference(values(a, m).to_numpy(), values(b, m).to_numpy())
        for m in ('char_acc', 'seq_acc')
      },
    }
    for a, b in CONTRASTS
  ]
  print(
    '\n'.join(
      [
        f'# At L = {length}: the addition_rev take-apart',
        '',
        '    python experiments/length_contrasts.py',
        '',
        f'Roots `{prefix}{{{",".join(sorted(roots))}}}`; mean ± sem over seeds (n), greedy decoding.',
        '',
        markdown_table(table),
        '',
        '## Differences, Welch 95% CI',
        '',
        markdown_table(diffs),
        '',
      ]
    )
  )


if __name__ == '__main__':
  main(*sys.argv[1:2])
