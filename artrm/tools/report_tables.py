"""The report's numbers: the results as a frame, mean ± sem over seeds, and the tables.

Every number is the mean ± sem over seeds (sem = std(ddof=1) / sqrt(n); n = 1
has no error bar). Config columns that vary within a (rung, task) define
settings (`results_frame`). A recipe study, whose runs differ in recipe, also
gets its compute (`compute_table`), its effects with 95% confidence intervals
(`effects_table`) and when each row learns (`learned_table`).
"""

import warnings

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from artrm.models import RUNGS
from artrm.tables import markdown_table
from artrm.tools import results

# Candidates for settings, in the order a column is kept: one determined by
# those before it (n_head = n_embd / 64) adds nothing and is dropped.
SETTING_COLUMNS = (
  'recipe',  # a run's non-default training recipe ('paper' if none)
  'pos_encoding',
  'input_injection',
  'train_length',
  'budget',
  'n_embd',
  'n_head',
  'n_layer',
  'n_outer_loops',
  'n_inner_loops',
  'max_steps',
)

ACCURACY = ('char_acc', 'seq_acc')

QUARTILES = ('q1', 'q2', 'q3', 'q4')


def results_frame(rows: list[dict]) -> tuple[pd.DataFrame, list[str]]:
  """The rows as a frame with ordered `model` and `setting` categories, and the setting columns."""
  df = pd.DataFrame(rows, columns=results.COLUMNS)
  cols = []
  for col in SETTING_COLUMNS:
    if (df.groupby(['model', 'task', *cols], dropna=False)[col].nunique(dropna=False) > 1).any():
      cols.append(col)
  present = set(df['model'])
  models = [m for m in RUNGS if m in present] + sorted(present - set(RUNGS))
  df['model'] = pd.Categorical(df['model'], categories=models, ordered=True)
  df['setting'] = ''
  for col in cols:
    df['setting'] += ('' if col == cols[0] else ', ') + col + '=' + df[col].map(fmt)
  order = df.sort_values(cols)['setting'].unique() if cols else ['']
  df['setting'] = pd.Categorical(df['setting'], categories=order, ordered=True)
  return df, cols


def fmt(value) -> str:
  return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def rung_name(model: str) -> str:
  return f'{model}: {RUNGS[model].title}' if model in RUNGS else model


def at_train_length(df: pd.DataFrame, kind: str) -> pd.DataFrame:
  return df[(df['kind'] == kind) & (df['eval_length'] == df['train_length'])]


def seed_stats(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
  """mean, sem and n of `value` over seeds, per combination of `keys`."""
  out = (
    df.groupby(keys, dropna=False, observed=True, sort=True)['value']
    .agg(['mean', 'std', 'count'])
    .reset_index()
  )
  out['sem'] = out['std'] / np.sqrt(out['count'])  # NaN for n = 1: no error bar
  return out.rename(columns={'count': 'n'}).drop(columns='std')


def sem_cell(mean: float, sem: float, n: int) -> str:
  return f'{mean:.3f} ± {sem:.3f} (n={int(n)})' if n > 1 else f'{mean:.3f} (n=1)'


def stats_table(stats: pd.DataFrame, index: list[str], column: str, values) -> str:
  """Markdown table of mean ± sem cells: a row per `index` combination, a column per value."""
  rows = []
  for key, group in stats.groupby(index, dropna=False, observed=True, sort=True):
    row = {c: rung_name(v) if c == 'model' else fmt(v) for c, v in zip(index, key)}
    cells = group.set_index(column)
    for v in values:
      row[fmt(v) if column in ('task', 'metric') else f'{column}={fmt(v)}'] = (
        sem_cell(*cells.loc[v, ['mean', 'sem', 'n']]) if v in cells.index else '–'
      )
    rows.append(row)
  return markdown_table(rows)


COMPUTE_NOTE = (
  'forward: block passes of one forward (all steps); grad: those whose parameters '
  'get gradient; backward: those the backward pass runs; train/token: passes run '
  'forward or backward per position of a batch over its supervision passes; '
  'inference/token: passes per generated token; training forward: max_steps x '
  'inference/token, the forward passes a position of the training stream sees in a '
  'run (compute-matched controls equal it). docs/compute.md.'
)


def compute_table(df: pd.DataFrame, cols: list[str]) -> str:
  """The compute columns of each (setting, rung) row; constant within a run."""
  keys = [*cols, 'model']
  first = df.groupby(keys, observed=True, sort=True).first().reset_index()
  rows = [
    {
      **{c: rung_name(r[c]) if c == 'model' else fmt(r[c]) for c in keys},
      'forward': fmt(r['forward_passes']),
      'grad': fmt(r['grad_passes']),
      'backward': fmt(r['backward_passes']),
      'train/token': fmt(r['train_passes_per_token']),
      'inference/token': fmt(r['inference_passes']),
      'training forward': fmt(r['max_steps'] * r['inference_passes']),
    }
    for _, r in first.iterrows()
  ]
  return markdown_table(rows) + '\n\n' + COMPUTE_NOTE


# The references every row of a recipe study is compared with: the paper's trm
# at its base step count, and the paper's best rung.
REFERENCES = (('trm', "the paper's trm"), ('ut_level1', 'ut_level1'))


def welch_difference(x: np.ndarray, ref: np.ndarray) -> str:
  """mean(x) - mean(ref) [95% CI from Welch's t] over seeds; '–' with fewer than 2 each."""
  if len(x) < 2 or len(ref) < 2:
    return '–'
  with warnings.catch_warnings():  # seeds that agree exactly: no spread to estimate
    warnings.simplefilter('ignore', RuntimeWarning)
    ci = scipy_stats.ttest_ind(x, ref, equal_var=False).confidence_interval(0.95)
  d = x.mean() - ref.mean()
  low, high = (ci.low, ci.high) if np.isfinite(ci.low) else (d, d)  # no spread: exact
  return f'{d:+.3f} [{low:+.3f}, {high:+.3f}]'


def effects_table(final: pd.DataFrame, cols: list[str], tasks: list[str]) -> str:
  """Per task and row, char_acc at the training length minus each reference's
  (recipe 'paper', fewest max_steps), with a Welch t 95% CI over seeds."""
  acc = final[final['metric'] == 'char_acc']
  base = acc[acc['recipe'] == 'paper']
  if 'max_steps' in cols:
    base = base[
      base['max_steps'] == base.groupby('model', observed=True)['max_steps'].transform('min')
    ]
  rows = []
  for task in tasks:
    refs = {
      m: base[(base['task'] == task) & (base['model'] == m)]['value'].to_numpy()
      for m, _ in REFERENCES
    }
    for (setting, model), g in acc[acc['task'] == task].groupby(
      ['setting', 'model'], observed=True, sort=True
    ):
      row = {'task': task, 'model': model, 'setting': setting.replace('recipe=', '')}
      for m, label in REFERENCES:
        ref, x = refs[m], g['value'].to_numpy()
        if len(ref) < 2 or len(x) < 2 or (model == m and np.array_equal(np.sort(x), np.sort(ref))):
          row[f'vs {label}'] = '–'
          continue
        row[f'vs {label}'] = welch_difference(x, ref)
      rows.append(row)
  return markdown_table(rows) + (
    "\n\nDifference of means over seeds, [95% CI] from Welch's t; an interval that "
    'excludes 0 is a difference at the 5% level. The references are the rungs with the '
    "paper's recipe at the base step count."
  )


LEARNED = 0.9  # char_acc (mean over seeds) at which a row counts as having learned the task


def learned_table(df: pd.DataFrame, cols: list[str], tasks: list[str]) -> str:
  """Per row and task, the first evaluation step (and the training forward passes per
  position by then) at which the seed-mean char_acc at the training length reaches LEARNED."""
  curves = at_train_length(df, 'curve')
  curves = curves[curves['metric'] == 'char_acc']
  stats = seed_stats(curves, [*cols, 'model', 'task', 'step', 'inference_passes'])
  rows = []
  for key, g in stats.groupby([*cols, 'model'], observed=True, sort=True):
    row = {c: rung_name(v) if c == 'model' else fmt(v) for c, v in zip([*cols, 'model'], key)}
    for task in tasks:
      hit = g[(g['task'] == task) & (g['mean'] >= LEARNED)].sort_values('step')
      if not (g['task'] == task).any():
        row[task] = '–'
      elif hit.empty:
        row[task] = 'not learned'
      else:
        step, passes = int(hit['step'].iloc[0]), int(hit['inference_passes'].iloc[0])
        row[task] = f'step {step} ({step * passes} passes)'
    rows.append(row)
  return markdown_table(rows) + (
    '\n\nPasses: training forward block passes per position by that step (step x '
    'inference passes per token); evaluations every max_steps / 10 steps.'
  )
