"""A suite's report: its results table, figures and a markdown page.

Every number is the mean ± sem over seeds (sem = std(ddof=1) / sqrt(n); n = 1
has no error bar), at the run's own training length unless the figure sweeps
another axis. Config columns that vary within a (rung, task), e.g. n_embd in a
width sweep, define settings: the tables index by them, figure 1 and the
sweep figures put them side by side, and the other figures repeat per setting.
Runs that differ in recipe (a recipe study) also get their compute, their
effects with 95% confidence intervals, when each learns, and figure 8.
The numbers and tables are in `report_tables`, the figures in `report_figures`;
this module lays out the page. `pip install -e ".[report]"`.
"""

import os
import re

import pandas as pd

from artrm.tools import report_figures as figures
from artrm.tools import results
from artrm.tools.report_tables import (
  ACCURACY,
  LEARNED,
  at_train_length,
  compute_table,
  effects_table,
  learned_table,
  results_frame,
  seed_stats,
  stats_table,
)

DPI = 120
# The figures drawn once per setting: (title, file name stem, draw function).
PER_SETTING = (
  ('Figure 2: addition accuracy by rung group', 'fig2_addition_groups', figures.fig_groups),
  ('Figure 3: accuracy by answer position', 'fig3_positions', figures.fig_positions),
  ('Figure 4: learning curves', 'fig4_curves', figures.fig_curves),
  ('Figure 5: length generalisation', 'fig5_length', figures.fig_length),
  ('Figure 6: inference-step scaling', 'fig6_inference', figures.fig_inference),
)


def make_report(root: str, out_dir: str) -> str:
  """Writes out_dir/results.csv, the figures and out_dir/README.md; returns the README's path."""
  rows = results.gather(root)
  os.makedirs(out_dir, exist_ok=True)
  results.write_table(rows, os.path.join(out_dir, 'results.csv'))
  df, cols = results_frame(rows)
  tasks = sorted(df['task'].unique())
  final = at_train_length(df, 'final')
  md = _overview(df, cols)
  md += _headline(final, cols, tasks)
  if 'recipe' in cols:  # a recipe study: what each row costs, and its effect with a CI
    md += _study_tables(df, final, cols, tasks)
  md += _figures(df, final, cols, tasks, out_dir)
  path = os.path.join(out_dir, 'README.md')
  with open(path, 'w') as f:
    f.write('\n'.join(md))
  return path


def _overview(df: pd.DataFrame, cols: list[str]) -> list[str]:
  """The title and what the report covers: runs, rungs, tasks, seeds, lengths, settings."""
  models = list(df['model'].cat.categories)
  tasks = sorted(df['task'].unique())
  seeds = sorted(set(df.groupby('run')['seed'].nunique()))
  md = [
    f'# Report: {df["suite"].iloc[0]}',
    '',
    f'{df["run"].nunique()} runs: rungs {", ".join(models)}; tasks {", ".join(tasks)}; '
    f'{"/".join(map(str, seeds))} seeds per run; evaluated at lengths '
    f'{", ".join(map(str, sorted(df["eval_length"].unique())))}. '
    'All rows: [results.csv](results.csv).',
    '',
    'Cells are mean ± sem over seeds (sem = std(ddof=1)/√n) with n the number of seeds; '
    'n = 1 has no error bar. "At the training length" means eval_length = train_length, '
    'the last evaluation of each run unless said otherwise.',
    '',
  ]
  if cols:
    md += [f'Settings (config columns that vary within a rung and task): {", ".join(cols)}.', '']
  return md


def _headline(final: pd.DataFrame, cols: list[str], tasks: list[str]) -> list[str]:
  """A table per accuracy metric at the training length: a row per setting and rung."""
  md = ['## Headline: accuracy at the training length', '']
  stats = seed_stats(final, [*cols, 'model', 'task', 'metric'])
  for metric in ACCURACY:
    table = stats_table(stats[stats['metric'] == metric], [*cols, 'model'], 'task', tasks)
    md += [f'### {metric}', '', table, '']
  return md


def _study_tables(df, final, cols: list[str], tasks: list[str]) -> list[str]:
  """A recipe study's compute per row, effects against the references, and when each learns."""
  md = ['### Compute per row', '', compute_table(df, cols), '']
  md += ['### Effects: differences in char_acc with 95% confidence intervals', '']
  md += [effects_table(final, cols, tasks), '']
  md += [f'### When each row learns: first step with mean char_acc >= {LEARNED}', '']
  return md + [learned_table(df, cols, tasks), '']


def _figure(out_dir: str, title: str, name: str, drawn) -> list[str]:
  """Saves the figure of `drawn` = (figure or None, markdown) as `name` and returns
  its markdown: the image and the text under it, or why it was not drawn."""
  fig, text = drawn
  if fig is None:
    return [f'{title.split(":")[0]}: not drawn, {text}.', '']
  fig.savefig(os.path.join(out_dir, name), dpi=DPI)
  return [f'![{title}]({name})', '', *([text, ''] if text else [])]


def _figures(df, final, cols: list[str], tasks: list[str], out_dir: str) -> list[str]:
  """Every figure's section, figure 1 to 8, saved under out_dir."""
  models = list(df['model'].cat.categories)
  title = 'Figure 1: accuracy by task and rung'
  drawn = figures.fig_task_rung(final, models)
  md = [f'## {title}', '', *_figure(out_dir, title, 'fig1_task_rung.png', drawn)]
  for title, name, draw in PER_SETTING:
    md += _per_setting_figure(df, models, tasks, out_dir, title, name, draw)
  for col in (c for c in cols if pd.api.types.is_numeric_dtype(df[c])):  # a line per number
    title = f'Figure 7: accuracy vs {col}'
    drawn = figures.fig_sweep(final, col, cols, models)
    md += [f'## {title}', '', *_figure(out_dir, title, f'fig7_sweep_{col}.png', drawn)]
  if 'recipe' in cols:
    title = 'Figure 8: every row against training compute'
    drawn = figures.fig_rows(df, tasks)
    md += [f'## {title}', '', *_figure(out_dir, title, 'fig8_rows_compute.png', drawn)]
  return md


def _per_setting_figure(df, models, tasks, out_dir: str, title: str, name: str, draw):
  """`draw`'s figure once per setting, or one note if no setting has what it plots."""
  settings = list(df['setting'].cat.categories)
  md = [f'## {title}', '']
  drawn = {s: draw(df[df['setting'] == s], models, tasks) for s in settings}
  if all(fig is None for fig, _ in drawn.values()):  # one note, not one per setting
    return md + _figure(out_dir, title, '', drawn[settings[0]])
  for setting, figure in drawn.items():
    suffix = '_' + re.sub(r'[^A-Za-z0-9]+', '_', setting).strip('_') if setting else ''
    md += [f'### {setting}', ''] if setting else []
    md += _figure(out_dir, title, f'{name}{suffix}.png', figure)
  return md
