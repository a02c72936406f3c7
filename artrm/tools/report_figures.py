"""The report's figures: each `fig_*` returns (Figure, markdown to show under it), or
(None, why it is not drawn) when the results lack what it plots.

Figures use matplotlib's object API (Figure, rendered by Agg on savefig), so no
pyplot state or display is involved.
"""

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
import numpy as np
import pandas as pd

from artrm.models import RUNGS
from artrm.tables import markdown_table
from artrm.tools.report_tables import (
  ACCURACY,
  QUARTILES,
  at_train_length,
  fmt,
  rung_name,
  seed_stats,
  sem_cell,
  stats_table,
)

STREAM_GROUPS = ('non-recursive', 'single stream', 'dual stream')


def rung_color(model: str):
  return colormaps['tab10'](list(RUNGS).index(model) if model in RUNGS else len(RUNGS))


def _stream_group(model: str) -> str:
  rung = RUNGS.get(model)
  if rung is None:
    return 'other'
  return 'non-recursive' if not rung.tied else f'{rung.stream} stream'


def _where(df: pd.DataFrame) -> str:
  """Names the setting, on a line of its own, in the title of a per-setting figure."""
  setting = df['setting'].iloc[0]
  return f'\n{setting}' if setting else ''


def _accuracy_axis(ax, ylabel: str):
  ax.set_ylim(0, 1.02)
  ax.set_yticks(np.linspace(0, 1, 6))
  ax.set_ylabel(ylabel)
  ax.grid(axis='y', alpha=0.3)


def _lines(ax, stats: pd.DataFrame, x: str, models: list[str], band: bool = False):
  """A line per rung of mean vs `x`, ± sem as a band (dense x) or error bars (few x)."""
  drawn = [m for m in models if (stats['model'] == m).any()]
  span = np.ptp(stats[x]) if len(stats) else 0
  for i, m in enumerate(drawn):
    r = stats[stats['model'] == m].sort_values(x)
    kw = dict(color=rung_color(m), label=rung_name(m))
    if band:
      ax.plot(r[x], r['mean'], lw=1.5, **kw)
      ax.fill_between(
        r[x], r['mean'] - r['sem'], r['mean'] + r['sem'], color=kw['color'], alpha=0.2, lw=0
      )
    else:
      dodge = 0.01 * span * (i - (len(drawn) - 1) / 2)  # error bars at one x stay apart
      ax.errorbar(r[x] + dodge, r['mean'], yerr=r['sem'], marker='o', ms=4, capsize=3, lw=1.5, **kw)


def _legend(fig: Figure, axes, fontsize: int = 9, ncols: int | None = None):
  """One legend for the figure, below it, from the lines drawn in any subplot."""
  handles = {}
  for ax in np.ravel(axes):
    for h, label in zip(*ax.get_legend_handles_labels()):
      handles.setdefault(label, h)
  fig.legend(
    handles.values(),
    handles.keys(),
    loc='outside lower center',
    fontsize=fontsize,
    ncols=ncols or max(1, min(len(handles), int(fig.get_figwidth() / 2.9))),
  )


def _grid(n_rows: int, n_cols: int, width: float = 4.2, height: float = 3.0):
  fig = Figure(figsize=(max(6.5, width * n_cols), height * n_rows + 1.0), layout='constrained')
  return fig, fig.subplots(n_rows, n_cols, squeeze=False)


def fig_task_rung(final: pd.DataFrame, models: list[str]):
  stats = seed_stats(final[final['metric'].isin(ACCURACY)], ['task', 'setting', 'model', 'metric'])
  if stats.empty:
    return None, "no 'final' evaluation at the training length"
  settings = stats['setting'].astype(str)
  stats['group'] = stats['task'] + np.where(
    settings != '', '\n' + settings.str.replace(', ', '\n'), ''
  )
  groups = list(dict.fromkeys(stats['group']))
  drawn = [m for m in models if m in set(stats['model'])]
  group_width = max(0.28 * len(drawn), 1.3 if (settings != '').any() else 0)  # room for labels
  fig = Figure(figsize=(max(9.0, group_width * len(groups) + 2), 7), layout='constrained')
  axes = fig.subplots(2, 1, sharex=True)
  width = 0.8 / len(drawn)
  for ax, metric in zip(axes, ACCURACY):
    s = stats[stats['metric'] == metric]
    for i, m in enumerate(drawn):
      r = s[s['model'] == m].set_index('group').reindex(groups)
      ax.bar(
        np.arange(len(groups)) + (i - (len(drawn) - 1) / 2) * width,
        r['mean'],
        width,
        yerr=r['sem'],
        color=rung_color(m),
        label=rung_name(m),
        capsize=2,
        error_kw=dict(lw=0.8),
      )
    _accuracy_axis(ax, metric)
    ax.set_title(f'{metric} at the training length (final evaluation)')
  axes[-1].set_xticks(np.arange(len(groups)), groups)
  axes[-1].set_xlabel('task' if groups == list(stats['task'].unique()) else 'task, setting')
  _legend(fig, axes)
  return fig, ''


def fig_groups(df: pd.DataFrame, models: list[str], tasks: list[str]):
  """Addition's char_acc and seq_acc per rung, the rungs grouped by stream kind."""
  del tasks
  final = at_train_length(df[df['task'] == 'addition'], 'final')
  stats = seed_stats(final[final['metric'].isin(ACCURACY)], ['model', 'metric'])
  if stats.empty:
    return None, "no 'final' addition evaluation at the training length"
  drawn = [m for m in models if m in set(stats['model'])]
  groups = [g for g in (*STREAM_GROUPS, 'other') if any(_stream_group(m) == g for m in drawn)]
  colors = {g: colormaps['Set2'](i) for i, g in enumerate((*STREAM_GROUPS, 'other'))}
  fig = Figure(figsize=(max(6.5, 1.0 * len(drawn) + 2), 5), layout='constrained')
  ax = fig.subplots()
  x, ticks, rows = 0.0, [], []
  for g in groups:
    members = [m for m in drawn if _stream_group(m) == g]
    start = x
    for m in members:
      _metric_bars(ax, stats[stats['model'] == m], x, colors[g])
      rows.append({'group': g, 'rung': rung_name(m), **_metric_cells(stats[stats['model'] == m])})
      ticks.append((x, RUNGS[m].title if m in RUNGS else m))
      x += 1
    ax.text(
      (start + x - 1) / 2,
      1.03,
      g,
      transform=ax.get_xaxis_transform(),
      ha='center',
      fontweight='bold',
    )
    if g != groups[-1]:
      ax.axvline(x - 0.25, color='grey', ls=':', lw=1)
    x += 0.5
  _groups_axis(ax, ticks, 'Addition by rung group' + _where(df))
  return fig, markdown_table(rows)


def _metric_bars(ax, stats: pd.DataFrame, x: float, color):
  """One rung's char_acc (plain) and seq_acc (hatched) bars either side of x."""
  for offset, metric, hatch in ((-0.2, 'char_acc', ''), (0.2, 'seq_acc', '//')):
    r = stats[stats['metric'] == metric]
    if not r.empty:
      ax.bar(
        x + offset,
        r['mean'].iloc[0],
        0.4,
        yerr=r['sem'].iloc[0],
        color=color,
        hatch=hatch,
        edgecolor='black',
        lw=0.5,
        capsize=2,
        error_kw=dict(lw=0.8),
      )


def _metric_cells(stats: pd.DataFrame) -> dict[str, str]:
  """One rung's mean ± sem cell per accuracy metric ('–' where missing)."""
  by_metric = stats.set_index('metric')
  return {
    metric: sem_cell(*by_metric.loc[metric, ['mean', 'sem', 'n']])
    if metric in by_metric.index
    else '–'
    for metric in ACCURACY
  }


def _groups_axis(ax, ticks: list[tuple[float, str]], title: str):
  """`fig_groups`' rung names under the bars, accuracy axis, title and hatch legend."""
  ax.set_xticks(*zip(*ticks))
  ax.tick_params(axis='x', labelrotation=25)
  for label in ax.get_xticklabels():
    label.set_horizontalalignment('right')
  _accuracy_axis(ax, 'accuracy at the training length')
  ax.set_title(title, pad=22)
  ax.legend(
    handles=[
      Patch(facecolor='white', edgecolor='black', label='char_acc'),
      Patch(facecolor='white', edgecolor='black', hatch='//', label='seq_acc'),
    ],
    loc='upper left',
    fontsize=9,
  )


def fig_positions(df: pd.DataFrame, models: list[str], tasks: list[str]):
  final = at_train_length(df, 'final')
  quartiles = seed_stats(final[final['metric'].isin(QUARTILES)], ['task', 'model', 'metric'])
  positions = final[final['metric'].str.fullmatch(r'pos\d+')].assign(
    position=lambda d: d['metric'].str[3:].astype(int)
  )
  positions = seed_stats(positions, ['task', 'model', 'position'])
  if quartiles.empty and positions.empty:
    return None, 'no per-position results at the training length'
  quartiles['quartile'] = quartiles['metric'].str[1:].astype(int)
  fig, axes = _grid(2, len(tasks))
  for j, task in enumerate(tasks):
    top, bottom = axes[0, j], axes[1, j]
    _lines(top, quartiles[quartiles['task'] == task], 'quartile', models)
    top.set_xticks(range(1, 5), QUARTILES)
    top.set(title=f'{task}: by answer quarter', xlabel='quarter of the answer (first to last)')
    _lines(bottom, positions[positions['task'] == task], 'position', models, band=True)
    bottom.set(title=f'{task}: by answer position', xlabel='answer position (0 = first)')
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    _accuracy_axis(top, 'char accuracy')
    _accuracy_axis(bottom, 'char accuracy')
  fig.suptitle('Accuracy by output position at the training length' + _where(df))
  _legend(fig, axes)
  return fig, stats_table(quartiles, ['task', 'model'], 'metric', QUARTILES)


def fig_curves(df: pd.DataFrame, models: list[str], tasks: list[str]):
  curves = at_train_length(df, 'curve')
  stats = seed_stats(curves[curves['metric'].isin(ACCURACY)], ['task', 'model', 'metric', 'step'])
  if stats.empty:
    return None, "no learning curves ('curve' rows from metrics.jsonl)"
  fig, axes = _grid(len(ACCURACY), len(tasks))
  for i, metric in enumerate(ACCURACY):
    for j, task in enumerate(tasks):
      ax = axes[i, j]
      _lines(
        ax, stats[(stats['task'] == task) & (stats['metric'] == metric)], 'step', models, band=True
      )
      _accuracy_axis(ax, f'{metric} at train length')
      ax.set(title=f'{task}: {metric}', xlabel='training step')
  fig.suptitle('Learning curves, mean ± sem band over seeds' + _where(df))
  _legend(fig, axes)
  return fig, ''


def fig_length(df: pd.DataFrame, models: list[str], tasks: list[str]):
  final = df[(df['kind'] == 'final') & df['metric'].isin(ACCURACY)]
  if final['eval_length'].nunique() < 2:
    return None, 'the runs were evaluated at one length only'
  stats = seed_stats(final, ['task', 'model', 'metric', 'eval_length'])
  fig, axes = _grid(len(ACCURACY), len(tasks))
  for i, metric in enumerate(ACCURACY):
    for j, task in enumerate(tasks):
      ax = axes[i, j]
      _lines(
        ax, stats[(stats['task'] == task) & (stats['metric'] == metric)], 'eval_length', models
      )
      for length in final.loc[final['task'] == task, 'train_length'].unique():
        ax.axvline(length, color='grey', ls='--', lw=1)
      ax.set_xticks(sorted(stats['eval_length'].unique()))
      _accuracy_axis(ax, metric)
      ax.set(title=f'{task}: {metric}', xlabel='evaluation length (dashed: training length)')
  fig.suptitle('Generalisation to other lengths, final evaluation' + _where(df))
  _legend(fig, axes)
  lengths = sorted(stats['eval_length'].unique())
  return fig, '**char_acc by evaluation length**\n\n' + stats_table(
    stats[stats['metric'] == 'char_acc'], ['task', 'model'], 'eval_length', lengths
  )


def fig_inference(df: pd.DataFrame, models: list[str], tasks: list[str]):
  rows = df[(df['kind'] == 'inference') & (df['metric'] == 'char_acc')]
  if rows.empty:
    return None, "no 'inference' rows (re-evaluations with more steps, inference_eval.json)"
  stats = seed_stats(rows, ['task', 'eval_length', 'model', 'inference_steps'])
  lengths = sorted(stats['eval_length'].unique())
  fig, axes = _grid(len(lengths), len(tasks))
  for i, length in enumerate(lengths):
    for j, task in enumerate(tasks):
      ax = axes[i, j]
      _lines(
        ax,
        stats[(stats['task'] == task) & (stats['eval_length'] == length)],
        'inference_steps',
        models,
      )
      ax.set_xticks(sorted(stats['inference_steps'].unique()))
      _accuracy_axis(ax, 'char_acc')
      ax.set(title=f'{task}, length {length}', xlabel='inference steps')
  fig.suptitle('Inference-step scaling' + _where(df))
  _legend(fig, axes)
  steps = sorted(stats['inference_steps'].unique())
  return fig, '**char_acc by inference steps**\n\n' + stats_table(
    stats, ['task', 'eval_length', 'model'], 'inference_steps', steps
  )


def fig_sweep(final: pd.DataFrame, col: str, cols: list[str], models: list[str]):
  """Accuracy vs one setting column: a row of subplots per combination of the others."""
  others = [c for c in cols if c != col]
  stats = seed_stats(
    final[final['metric'].isin(ACCURACY)], [*others, 'task', 'model', 'metric', col]
  )
  if stats[col].nunique() < 2:
    return None, f'{col} takes one value at the training length'
  combos = stats[others].drop_duplicates().to_dict('records') if others else [{}]
  # Only the combinations along which `col` varies (a recipe study sweeps steps for one recipe).
  combos = [
    combo
    for combo in combos
    if stats.loc[(stats[list(combo)] == pd.Series(combo)).all(axis=1), col].nunique() > 1
  ]
  panels = [(t, m) for t in sorted(stats['task'].unique()) for m in ACCURACY]
  fig, axes = _grid(len(combos), len(panels))
  for i, combo in enumerate(combos):
    sub = stats
    for c, v in combo.items():
      sub = sub[sub[c] == v]
    prefix = ''.join(f'{c}={fmt(v)}, ' for c, v in combo.items())
    for j, (task, metric) in enumerate(panels):
      ax = axes[i, j]
      _lines(ax, sub[(sub['task'] == task) & (sub['metric'] == metric)], col, models)
      ax.set_xticks(sorted(stats[col].unique()))
      _accuracy_axis(ax, metric)
      ax.set(title=f'{prefix}{task}: {metric}', xlabel=col)
  fig.suptitle(f'Accuracy at the training length vs {col}')
  _legend(fig, axes)
  return fig, ''


def fig_rows(df: pd.DataFrame, tasks: list[str]):
  """char_acc at the training length of every (setting, rung) row on one axis per task,
  against the forward block passes trained so far (step x inference passes per token),
  so a recipe and its compute-matched control end at the same x."""
  curves = at_train_length(df, 'curve')
  curves = curves[curves['metric'] == 'char_acc'].copy()
  if curves.empty:
    return None, "no learning curves ('curve' rows from metrics.jsonl)"
  curves['compute'] = curves['step'] * curves['inference_passes']
  curves['row'] = (
    curves['model'].astype(str) + ' ' + curves['setting'].astype(str).str.replace('recipe=', '')
  )
  stats = seed_stats(curves, ['task', 'row', 'compute'])
  rows = list(dict.fromkeys(curves.sort_values(['model', 'setting'])['row']))
  palette = [*colormaps['tab10'].colors, *colormaps['Dark2'].colors, *colormaps['tab20b'].colors]
  fig, axes = _grid(1, len(tasks), width=max(5.5, 13 / len(tasks)), height=4.0)
  for j, task in enumerate(tasks):
    ax = axes[0, j]
    for i, row in enumerate(rows):
      r = stats[(stats['task'] == task) & (stats['row'] == row)].sort_values('compute')
      if len(r):
        color, style = palette[i % len(palette)], ('-', '--')[i // len(palette) % 2]
        ax.plot(r['compute'], r['mean'], style, lw=1.3, marker='.', color=color, label=row)
    _accuracy_axis(ax, 'char_acc at train length')
    ax.set(title=task, xlabel='forward block passes trained (step x passes per token)')
  fig.suptitle('Every row, mean over seeds, against training forward compute')
  _legend(fig, axes, fontsize=7, ncols=2)
  return fig, ''
