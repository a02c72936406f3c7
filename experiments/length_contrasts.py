"""Runs of several length-suite roots compared at given evaluation lengths: each run's
char_acc and seq_acc (mean ± sem over seeds) and Welch 95% CIs of named differences.
The roots share run names (a `fixed` root and a variable-length one), so a run is
named `root_suffix/run`. The studies (docs/length.md):

  python experiments/length_contrasts.py add3 > results/studies/length_beyond_add3_contrasts.md
  python experiments/length_contrasts.py copy > results/studies/length_beyond_copy_contrasts.md
  python experiments/length_contrasts.py copy8 > results/studies/length_beyond_copy8_contrasts.md
  python experiments/length_contrasts.py add5 > results/studies/length_beyond_add5_contrasts.md
  python experiments/length_contrasts.py reverse > results/studies/length_beyond_reverse_contrasts.md
  python experiments/length_contrasts.py rope > results/studies/length_beyond_rope_contrasts.md

add3: why `gpt` does not learn `addition_rev` at L = 3. copy: the CPU form's copy rows
with abacus positions at L and 2L: 1500, 4000 and 8000 steps, and index gaps (gap=3). copy8:
copy trained on lengths 1..8 (4000 steps), at L, 1.5L and 2L. add5: addition_rev trained on
lengths 1..5 (4000 steps), at L, 1.6L and 2L. reverse: reverse with the answer's abacus
indices counting up (the default), counting down (`down`), and counting down with the
separator indexed (`down,sep`), 4000 steps. rope: the abacus indices as rotations of q
and k (`abacus_rope`) against the learned table, on copy, reverse (down, sep) and
addition_rev, 4000 steps. Each study also
prints every seed's accuracy at each answer position at 2L (add3 aside).
"""

import sys

from length_beyond import MODELS, row  # a run's name, as the suite's sweep writes it
from length_table import cell  # mean ± sem (n), as every table here writes it
import pandas as pd

from artrm.tables import markdown_table
from artrm.tools import report_tables, results, suites


def run(
  root: str,
  task: str,
  model: str,
  encoding: str = 'abacus',
  offset: int = 20,
  gap: int = 1,
  down: bool = False,
  sep: bool = False,
):
  """`root/name` of a length_beyond.py run, named as its sweep names it."""
  overrides = row(MODELS[model], encoding, offset, gap, down, sep)
  return f'{root}/{suites.run_name({"task": task, **overrides})}'


RUNGS = ('gpt', 'ut', 'trm')  # the control, the single- and the dual-stream recursion
add_rev = lambda root, model, encoding='abacus': run(root, 'addition_rev', model, encoding, 12)
ADD3 = dict(
  title='The addition_rev take-apart',
  prefix='workdirs/length_beyond_add3_',
  lengths=(3,),
  rows={
    'addition, learned, fixed': run('fixed', 'addition', 'gpt', 'learned'),
    'addition, abacus, fixed': run('fixed', 'addition', 'gpt', offset=12),
    'addition_rev, learned, fixed': add_rev('fixed', 'gpt', 'learned'),
    'addition_rev, abacus, fixed': add_rev('fixed', 'gpt'),
    'addition_rev, learned, 1..L': add_rev('var', 'gpt', 'learned'),
    'addition_rev, abacus, 1..L': add_rev('var', 'gpt'),
    'addition_rev, abacus, fixed, 4000 steps': add_rev('fixed_4k', 'gpt'),
    'trm: addition_rev, abacus, fixed, 4000 steps': add_rev('fixed_4k', 'trm'),
    'ut: addition_rev, abacus, fixed, 4000 steps': add_rev('fixed_4k', 'ut'),
  },
  contrasts=[
    ('addition, learned, fixed', 'addition, abacus, fixed'),
    ('addition, learned, fixed', 'addition_rev, learned, fixed'),
    ('addition_rev, learned, fixed', 'addition_rev, learned, 1..L'),
    ('addition_rev, abacus, fixed', 'addition_rev, abacus, 1..L'),
    ('trm: addition_rev, abacus, fixed, 4000 steps', 'addition_rev, abacus, fixed, 4000 steps'),
    ('ut: addition_rev, abacus, fixed, 4000 steps', 'addition_rev, abacus, fixed, 4000 steps'),
  ],
)
COPY = dict(
  title='Copy with abacus positions: steps and index gaps',
  prefix='workdirs/length_beyond_',
  lengths=(5, 10),
  positions=(10,),
  rows={
    **{
      f'{m}, {steps} steps': run(root, 'copy', m)
      for m in ('gpt', 'ut', 'ut_level1', 'ut_level2', 'trm')
      for steps, root in (('1500', 'cpu'), ('4000', 'cpu_4k'))
    },
    **{f'{m}, 8000 steps': run('cpu_8k', 'copy', m) for m in ('gpt', 'trm')},
    'gpt, gap 3': run('cpu_gap3', 'copy', 'gpt', gap=3),
    'trm, gap 3': run('cpu_gap3', 'copy', 'trm', gap=3),
  },
  contrasts=[
    ('trm, 1500 steps', 'gpt, 1500 steps'),
    ('trm, 4000 steps', 'gpt, 4000 steps'),
    ('ut, 4000 steps', 'gpt, 4000 steps'),
    ('ut_level1, 4000 steps', 'gpt, 4000 steps'),
    ('ut_level2, 4000 steps', 'gpt, 4000 steps'),
    ('trm, 8000 steps', 'gpt, 8000 steps'),
    ('trm, 4000 steps', 'trm, 1500 steps'),
    ('trm, 8000 steps', 'trm, 4000 steps'),
    ('gpt, 4000 steps', 'gpt, 1500 steps'),
    ('trm, gap 3', 'trm, 1500 steps'),
    ('gpt, gap 3', 'gpt, 1500 steps'),
  ],
)
COPY8 = dict(
  title='Copy trained on lengths 1..8 with abacus positions, 4000 steps',
  prefix='workdirs/length_beyond_',
  lengths=(8, 12, 16),
  positions=(16,),
  rows={m: run('copy8_4k', 'copy', m, offset=32) for m in RUNGS},
  contrasts=[('trm', 'gpt'), ('ut', 'gpt')],
)
ADD5 = dict(
  title='addition_rev trained on lengths 1..5 with abacus positions, 4000 steps',
  prefix='workdirs/length_beyond_',
  lengths=(5, 8, 10),
  positions=(10,),
  rows={m: run('add5_4k', 'addition_rev', m) for m in RUNGS},
  contrasts=[('trm', 'gpt'), ('ut', 'gpt')],
)
REVERSE = dict(
  title='Reverse with abacus positions counting up, counting down, and down from the separator',
  prefix='workdirs/length_beyond_',
  lengths=(5, 8, 10),
  positions=(10,),
  rows={
    **{f'{m}, up': run('cpu_4k', 'reverse', m) for m in RUNGS},
    **{f'{m}, down': run('rev_down_4k', 'reverse', m, down=True) for m in RUNGS},
    **{f'{m}, down, sep': run('rev_sep_4k', 'reverse', m, down=True, sep=True) for m in RUNGS},
  },
  contrasts=[
    ('trm, down', 'gpt, down'),
    ('ut, down', 'gpt, down'),
    ('trm, down', 'trm, up'),
    ('ut, down', 'ut, up'),
    ('gpt, down', 'gpt, up'),
    ('trm, down, sep', 'gpt, down, sep'),
    ('ut, down, sep', 'gpt, down, sep'),
    ('trm, down, sep', 'trm, down'),
    ('ut, down, sep', 'ut, down'),
  ],
)
ROPE = dict(
  title='Abacus indices as rotations (abacus_rope) against the learned abacus table, 4000 steps',
  prefix='workdirs/length_beyond_',
  lengths=(5, 8, 10),
  positions=(10,),
  rows={
    **{f'copy, {m}, table': run('cpu_4k', 'copy', m) for m in (*RUNGS, 'ut_level1', 'ut_level2')},
    **{
      f'copy, {m}, rotation': run('rope_4k', 'copy', m, 'abacus_rope')
      for m in (*RUNGS, 'ut_level1', 'ut_level2')
    },
    **{f'reverse, {m}, table': run('rev_sep_4k', 'reverse', m, down=True, sep=True) for m in RUNGS},
    **{
      f'reverse, {m}, rotation': run('rope_4k', 'reverse', m, 'abacus_rope', down=True, sep=True)
      for m in RUNGS
    },
    **{f'addition_rev, {m}, table': run('add5_4k', 'addition_rev', m) for m in RUNGS},
    **{
      f'addition_rev, {m}, rotation': run('rope_4k', 'addition_rev', m, 'abacus_rope')
      for m in RUNGS
    },
  },
  contrasts=[
    *(
      (f'{t}, {m}, rotation', f'{t}, gpt, rotation')
      for t in ('copy', 'reverse')
      for m in ('ut', 'trm')
    ),
    *((f'copy, {m}, rotation', 'copy, gpt, rotation') for m in ('ut_level1', 'ut_level2')),
    *((f'{t}, {m}, rotation', f'{t}, {m}, table') for t in ('copy', 'reverse') for m in RUNGS),
    ('addition_rev, ut, rotation', 'addition_rev, gpt, rotation'),
    ('addition_rev, trm, rotation', 'addition_rev, gpt, rotation'),
  ],
)
STUDIES = {
  'add3': ADD3,
  'copy': COPY,
  'copy8': COPY8,
  'add5': ADD5,
  'reverse': REVERSE,
  'rope': ROPE,
}


def main(study: str = 'add3'):
  if study not in STUDIES:
    raise SystemExit(f'Unknown study {study!r}; choose one of {", ".join(STUDIES)}.')
  s = STUDIES[study]
  rows, prefix = s['rows'], s['prefix']
  roots = sorted({run.split('/')[0] for run in rows.values()})
  df = pd.DataFrame(
    [{**r, 'run': f'{root}/{r["run"]}'} for root in roots for r in results.gather(prefix + root)]
  )
  final = df[df['kind'] == 'final'].sort_values('seed')
  out = [
    f'# {s["title"]}',
    '',
    f'    python experiments/length_contrasts.py {study}',
    '',
    f'Roots `{prefix}{{{",".join(roots)}}}`; mean ± sem over seeds (n), greedy decoding.',
  ]
  for length in s['lengths']:
    out += ['', *at_length(final[final['eval_length'] == length], s, length)]
  for length in s.get('positions', ()):
    out += ['', *by_position(final[final['eval_length'] == length], s, length)]
  print('\n'.join(out + ['']))


def by_position(final: pd.DataFrame, s: dict, length: int) -> list[str]:
  """Each seed's accuracy at every answer position (1 = the first answer digit) and how
  many positions fall below 0.9: where in the answer a row errs, and whether its errors
  spread along the answer or sit at a few positions."""
  table = []
  for label, name in s['rows'].items():
    for seed, seed_df in final[final['run'] == name].groupby('seed', sort=True):
      acc = seed_df[seed_df['metric'].str.fullmatch(r'pos\d+')].set_index('metric')['value']
      acc = [acc[f'pos{i}'] for i in range(len(acc))]
      table.append(
        {
          'row': label,
          'seed': seed,
          'seq_acc': f'{seed_df[seed_df["metric"] == "seq_acc"]["value"].item():.3f}',
          'positions below 0.9': sum(v < 0.9 for v in acc),
          **{str(i + 1): f'{v:.2f}' for i, v in enumerate(acc)},
        }
      )
  # A table's columns are its first row's: pad rows of shorter answers (copy beside addition).
  n = max(len(r) for r in table) - 4
  table = [{**r, **{str(i): '' for i in range(1, n + 1) if str(i) not in r}} for r in table]
  return [
    f'## Accuracy at each answer position at length {length}, by seed',
    '',
    markdown_table(table),
  ]


def at_length(final: pd.DataFrame, s: dict, length: int) -> list[str]:
  """The study's rows and differences at one evaluation length."""
  values = lambda row, metric: final[
    (final['run'] == s['rows'][row]) & (final['metric'] == metric)
  ]['value']
  table = [
    {
      'row': row,
      'char_acc': cell(values(row, 'char_acc')),
      'seq_acc': cell(values(row, 'seq_acc')),
      'seq_acc by seed': ', '.join(f'{v:.3f}' for v in values(row, 'seq_acc')),
    }
    for row in s['rows']
  ]
  diffs = [
    {
      'A - B': f'{a} - {b}',
      **{
        m: report_tables.welch_difference(values(a, m).to_numpy(), values(b, m).to_numpy())
        for m in ('char_acc', 'seq_acc')
      },
    }
    for a, b in s['contrasts']
  ]
  return [
    f'## At length {length}',
    '',
    markdown_table(table),
    '',
    f'### Differences at length {length}, Welch 95% CI',
    '',
    markdown_table(diffs),
  ]


if __name__ == '__main__':
  main(*sys.argv[1:2])
