"""The report of the addition-form study (`why_trm.py:runlocal,addform,part=...`).

One table per part (rows x tasks, char_acc and seq_acc at the training length,
mean ± sem over seeds with n, each row's compute), the differences that
answer each question with Welch 95% CIs, and one figure per question:

  (a) what makes the AR-TRM learn: every `decon` / `depth` row as a ranked dot
      plot per task (mean ± sem);
  (b) does the fixed AR-TRM beat the dual UT on addition at matched training
      compute: char_acc against training passes (step x training passes per
      token), a line per `rank` row.

A row is named by its run's overrides less the task (the suite's run name).

  python experiments/study_report.py --roots=workdirs/why_trm_add,workdirs/why_trm_add_depth,workdirs/why_trm_add_rank --out=results/studies/why_trm_add
"""

import glob
import os
import re

from absl import app, flags
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from artrm import workdir as workdir_lib  # noqa: E402
from artrm.tables import markdown_table  # noqa: E402
from artrm.tools import report_tables, results  # noqa: E402
from artrm.training import eval_checkpoint  # noqa: E402

flags.DEFINE_list('roots', None, 'Suite roots, one per part.', required=True)
flags.DEFINE_string('out', None, 'Folder for README.md, results.csv and figures.', required=True)
flags.DEFINE_multi_string(
  'contrast',
  [
    # the input alone on the paper's trm: scale, step size, normalisation
    'trm,input_scale=36.0 - trm',
    'trm,input_norm=True - trm',
    'trm,embed_lr_mult=36.0 - trm',
    'trm,embed_init_std=1.0 - trm',
    'trm,learning_rate=0.009 - trm',
    'trm,learning_rate=0.03 - trm',
    'trm,input_scale=36.0 - trm,input_norm=True',
    'trm,carry_norm=True,input_scale=36.0 - trm,input_norm=True,carry_norm=True',
    'trm,carry_norm=True,input_scale=36.0 - trm,carry_norm=True,embed_lr_mult=36.0',
    'trm,carry_norm=True,input_scale=36.0 - trm,carry_norm=True,embed_init_std=1.0',
    'trm,carry_norm=True,embed_lr_mult=36.0 - trm,carry_norm=True',
    'trm,carry_norm=True,input_scale=36.0 - trm,carry_norm=True,input_scale=8.0',
    'trm,carry_norm=True,input_scale=8.0 - trm,carry_norm=True',
    'trm,carry_norm=True,input_scale=36.0 - trm,carry_norm=True',
    'trm,carry_norm=True,input_scale=36.0 - ut_level1',
    'trm,carry_norm=True,input_scale=36.0 - ut_level1,carry_norm=True,input_scale=36.0',
    'trm,carry_norm=True,input_scale=36.0 - gpt',
    'trm,carry_norm=True,input_scale=36.0 - ut_level2,carry_norm=True,input_scale=36.0',
    'trm,carry_norm=True,input_scale=36.0 - trm,grad_reach=all',
    # at matched training compute (steps x training passes per token equal to gpt's)
    'trm,carry_norm=True,input_scale=36.0,max_steps=3200,every_steps=320 - ut_level1,carry_norm=True,input_scale=36.0',
    'trm,carry_norm=True,input_scale=36.0,max_steps=3200,every_steps=320 - ut_level1',
    'trm,carry_norm=True,input_scale=36.0,max_steps=3200,every_steps=320 - gpt',
    'trm,carry_norm=True,input_scale=36.0,max_steps=3200,every_steps=320 - ut_level2,carry_norm=True,input_scale=36.0,max_steps=2666,every_steps=266',
    # TRM's recipe on the fix: each ingredient against the fix, deep supervision against
    # the fix trained for as many forward passes
    'trm,carry_norm=True,input_scale=36.0,n_sup=2,sup_update=each - trm,carry_norm=True,input_scale=36.0,max_steps=4000,every_steps=400',
    'trm,carry_norm=True,input_scale=36.0,n_sup=2,sup_update=accumulate - trm,carry_norm=True,input_scale=36.0',
    'trm,carry_norm=True,input_scale=36.0,n_sup=4,sup_update=each - trm,carry_norm=True,input_scale=36.0,max_steps=8000,every_steps=800',
    'trm,carry_norm=True,input_scale=36.0,halt_loss_weight=0.5 - trm,carry_norm=True,input_scale=36.0',
    'trm,carry_norm=True,input_scale=36.0,ema_decay=0.999 - trm,carry_norm=True,input_scale=36.0',
    # depth: budget 24, trm runs 4 recursion steps
    'trm,carry_norm=True,input_scale=36.0,budget=24 - trm,budget=24',
    'trm,input_norm=True,carry_norm=True,budget=24 - trm,budget=24',
    'trm,input_norm=True,budget=24 - trm,budget=24',
    'trm,grad_reach=all,budget=24 - trm,budget=24',
    'trm,carry_norm=True,input_scale=36.0,budget=24 - ut_level1,budget=24',
  ],
  "'row A - row B': a difference of char_acc at the training length reported with its CI.",
)
flags.DEFINE_multi_string(
  'rank_rows',
  [
    'gpt',
    'ut_level1',
    'ut_level1,carry_norm=True,input_scale=36.0',
    'ut_level2,carry_norm=True,input_scale=36.0',
    'trm',
    'trm,carry_norm=True,input_scale=36.0',
    'trm,input_norm=True,carry_norm=True',
    'trm,input_norm=True,carry_norm=True,max_steps=3200,every_steps=320',
    'trm,grad_reach=all',
    'ut_level2,carry_norm=True,input_scale=36.0',
    'trm,carry_norm=True,input_scale=36.0,max_steps=3200,every_steps=320',
    'ut_level2,carry_norm=True,input_scale=36.0,max_steps=2666,every_steps=266',
  ],
  'Rows drawn in figure (b), accuracy against training compute. Repeat the flag per row.',
)
flags.DEFINE_multi_string(
  'sampled',
  [
    'gpt',
    'ut_level1',
    'trm',
    'trm,input_norm=True,carry_norm=True',
    'trm,carry_norm=True,input_scale=36.0',
    'ut_level1,carry_norm=True,input_scale=36.0',
  ],
  "Rows also evaluated with the paper's sampled decoding (each run's last checkpoint; "
  'evaluated once, then read from its eval/metrics.csv). Repeat the flag per row.',
)
FLAGS = flags.FLAGS

LEARNED = 0.9
REFERENCES = ('trm', 'ut_level1')  # rows every other is compared with


def row_label(run: str) -> str:
  return re.sub(r'(^|,)task=[^,]*', '', run).lstrip(',').replace('name=', '')


def frame(roots: list[str]) -> pd.DataFrame:
  df = pd.DataFrame([r for root in roots for r in results.gather(root)], columns=results.COLUMNS)
  df['row'] = df['run'].map(row_label)
  df['train_passes'] = df['step'] * df['train_passes_per_token']
  return df


def at_train(df: pd.DataFrame, kind: str, metric: str) -> pd.DataFrame:
  at_length = report_tables.at_train_length(df, kind)
  return at_length[at_length['metric'] == metric]


def part_tables(df: pd.DataFrame, suite: str) -> list[str]:
  part = df[df['suite'] == suite]
  tasks = sorted(part['task'].unique())
  rows_order = list(dict.fromkeys(part['row']))
  md = []
  for metric in ('char_acc', 'seq_acc'):
    final = at_train(part, 'final', metric)
    s = report_tables.seed_stats(final, ['row', 'task'])
    table = []
    for row in rows_order:
      r = part[part['row'] == row].iloc[0]
      line = {
        'row': row,
        'steps': int(r['max_steps']),
        'grad / backward passes': f'{r["grad_passes"]} / {r["backward_passes"]}',
        'train passes per token': int(r['train_passes_per_token']),
        'inference passes per token': int(r['inference_passes']),
      }
      for task in tasks:
        hit = s[(s['row'] == row) & (s['task'] == task)]
        line[task] = report_tables.sem_cell(*hit[['mean', 'sem', 'n']].iloc[0]) if len(hit) else '–'
      table.append(line)
    md += [f'### {metric} at the training length', '', markdown_table(table), '']
  final = at_train(part, 'final', 'char_acc')
  diffs = []
  for task in tasks:
    t = final[final['task'] == task]
    # The references of a part at another budget carry it in their name ('trm,budget=24').
    refs = {
      m: t[t['row'].str.fullmatch(re.escape(m) + r'(,budget=\d+)?')]['value'].to_numpy()
      for m in REFERENCES
    }
    for row in rows_order:
      x = t[t['row'] == row]['value'].to_numpy()
      if len(x):
        diffs.append(
          {
            'task': task,
            'row': row,
            **{f'vs {m}': report_tables.welch_difference(x, refs[m]) for m in REFERENCES},
          }
        )
  md += [
    '### char_acc differences, 95% CI (Welch)',
    '',
    markdown_table(diffs),
    '',
    *contrast_table(final, tasks),
    f'### When each row learns: first evaluation with mean char_acc >= {LEARNED}',
    '',
    learned_table(part, rows_order, tasks),
    '',
  ]
  return md


def contrast_table(final: pd.DataFrame, tasks: list[str]) -> list[str]:
  """The --contrast pairs present in `final`, each difference with its Welch 95% CI."""
  rows = []
  for task in tasks:
    t = final[final['task'] == task]
    for pair in FLAGS.contrast:
      a, b = (t[t['row'] == r.strip()]['value'].to_numpy() for r in pair.split(' - '))
      if len(a) and len(b):
        rows.append(
          {'task': task, 'A - B': pair, 'difference [95% CI]': report_tables.welch_difference(a, b)}
        )
  if not rows:
    return []
  return ['### Contrasts that answer the questions', '', markdown_table(rows), '']


def learned_table(part: pd.DataFrame, rows_order: list[str], tasks: list[str]) -> str:
  s = report_tables.seed_stats(
    at_train(part, 'curve', 'char_acc'), ['row', 'task', 'step', 'train_passes']
  )
  table = []
  for row in rows_order:
    line = {'row': row}
    for task in tasks:
      ran = s[(s['row'] == row) & (s['task'] == task)]
      hit = ran[ran['mean'] >= LEARNED].sort_values('step')
      line[task] = (
        '–'  # not run
        if ran.empty
        else f'step {int(hit["step"].iloc[0])} ({int(hit["train_passes"].iloc[0])} train passes)'
        if len(hit)
        else 'not learned'
      )
    table.append(line)
  return markdown_table(table)


def sampled_rows(roots: list[str], rows: list[str]) -> pd.DataFrame:
  """char_acc / seq_acc at the training length of `rows`' last checkpoints, sampled."""
  out = []
  for root in roots:
    for config_path in sorted(glob.glob(os.path.join(root, '*', workdir_lib.CONFIG))):
      wd = os.path.dirname(config_path)
      run = os.path.basename(wd)
      if row_label(run) not in rows or workdir_lib.read_final_eval(wd) is None:
        continue
      csv_path = os.path.join(wd, workdir_lib.EVAL_DIR, workdir_lib.EVAL_CSV)
      evals = pd.read_csv(csv_path) if os.path.exists(csv_path) else pd.DataFrame()
      if evals.empty or not (evals['decoding'] == 'sample').any():
        eval_checkpoint.evaluate_checkpoint(wd, 'latest', {'decoding': 'sample'})
        evals = pd.read_csv(csv_path)
      train_length = workdir_lib.read_config(wd)['train_length']
      evals = evals[(evals['decoding'] == 'sample') & (evals['eval_length'] == train_length)]
      out.append(evals.assign(suite=os.path.basename(os.path.normpath(root)), run=run))
  return pd.concat(out) if out else pd.DataFrame()


def decoding_table(df: pd.DataFrame, sampled: pd.DataFrame) -> str:
  """Greedy (the study's) against sampled (the paper's) decoding, per row and task."""
  table = []
  for (suite, run), g in sampled.groupby(['suite', 'run'], sort=False):
    greedy = df[(df['suite'] == suite) & (df['run'] == run)]
    line = {'part': suite, 'task': greedy['task'].iloc[0], 'row': row_label(run)}
    for metric in ('char_acc', 'seq_acc'):
      for name, frame_ in (
        ('greedy', at_train(greedy, 'final', metric)),
        ('sampled', g[g['metric'] == metric]),
      ):
        v = frame_['value'].to_numpy(float)
        line[f'{metric} {name}'] = report_tables.sem_cell(
          v.mean(), v.std(ddof=1) / np.sqrt(len(v)), len(v)
        )
    table.append(line)
  return markdown_table(table)


def fig_ranked(df: pd.DataFrame, suites: list[str], path: str):
  """(a): every row's final char_acc at the training length, ranked, one panel per task."""
  final = at_train(df[df['suite'].isin(suites)], 'final', 'char_acc').copy()
  final['row'] = final['row'] + np.where(
    final['suite'] == suites[0], '', ' [' + final['suite'] + ']'
  )
  tasks = sorted(final['task'].unique())
  fig, axes = plt.subplots(
    1,
    len(tasks),
    figsize=(4 + 5 * len(tasks), 0.32 * final['row'].nunique() + 1.6),
    layout='constrained',
    sharey=False,
    squeeze=False,
  )
  for ax, task in zip(axes[0], tasks):
    s = report_tables.seed_stats(final[final['task'] == task], ['row']).sort_values('mean')
    y = np.arange(len(s))
    ax.errorbar(s['mean'], y, xerr=s['sem'].fillna(0), fmt='o', ms=4, capsize=2)
    ax.set_yticks(y, s['row'], fontsize=7)
    ax.set(xlim=(0, 1.02), title=task, xlabel='char_acc at the training length (mean ± sem)')
    ax.grid(axis='x', alpha=0.3)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def fig_compute(df: pd.DataFrame, path: str):
  """(b): addition char_acc against training passes, a line per row, mean ± sem band."""
  curves = at_train(df[df['task'] == 'addition'], 'curve', 'char_acc')
  s = report_tables.seed_stats(curves, ['row', 'train_passes'])
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  for row in dict.fromkeys(curves['row']):
    r = s[s['row'] == row].sort_values('train_passes')
    ax.plot(r['train_passes'], r['mean'], marker='.', lw=1.2, label=row)
    ax.fill_between(r['train_passes'], r['mean'] - r['sem'], r['mean'] + r['sem'], alpha=0.15)
  ax.set(
    xlabel='training block passes per position (step x training passes per token)',
    ylabel='addition char_acc at the training length',
    ylim=(0, 1.02),
  )
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(_):
  df = frame(FLAGS.roots)
  os.makedirs(FLAGS.out, exist_ok=True)
  df.drop(columns=['row', 'train_passes']).to_csv(
    os.path.join(FLAGS.out, 'results.csv'), index=False
  )
  suites = list(dict.fromkeys(df['suite']))
  md = [
    '# The addition-form study',
    '',
    'Rows named by their overrides; cells mean ± sem over seeds (n seeds).',
    '',
  ]
  for suite in suites:
    md += [f'## {suite}', ''] + part_tables(df, suite)
  ranked = [s for s in suites if not s.endswith('rank')]
  if ranked:
    fig_ranked(df, ranked, os.path.join(FLAGS.out, 'fig_a_rows.png'))
    md += ['## (a) What makes the AR-TRM learn', '', '![rows](fig_a_rows.png)', '']
  # The rank part's own runs where it ran (its 5 seeds), else the rows wherever they are.
  rank = [s for s in suites if s.endswith('rank')]
  ranking = df[df['row'].isin(FLAGS.rank_rows) & (df['suite'].isin(rank) if rank else True)]
  if not ranking.empty:
    fig_compute(ranking, os.path.join(FLAGS.out, 'fig_b_compute.png'))
    md += ['## (b) Addition against training compute', '', '![compute](fig_b_compute.png)', '']
  sampled = sampled_rows(FLAGS.roots, FLAGS.sampled)
  if not sampled.empty:
    md += ["## Decoding: greedy and sampled (the paper's)", '', decoding_table(df, sampled), '']
  with open(os.path.join(FLAGS.out, 'README.md'), 'w') as f:
    f.write('\n'.join(md))
  print(os.path.join(FLAGS.out, 'README.md'))


if __name__ == '__main__':
  app.run(main)
