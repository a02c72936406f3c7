"""A suite's report: its results table, figures and a markdown page.

Every number is the mean ± sem over seeds (sem = std(ddof=1) / sqrt(n); n = 1
has no error bar), at the run's own training length unless the figure sweeps
another axis. Config columns that vary within a (rung, task), e.g. n_embd in a
width sweep, define settings: the tables index by them, figure 1 and the
sweep figures put them side by side, and the other figures repeat per setting.
Runs that differ in recipe (a recipe study) also get their compute, their
effects with 95% confidence intervals, when each learns, and figure 8.
Figures use matplotlib's object API (Figure, rendered by Agg on savefig), so no
pyplot state or display is involved. `pip install -e ".[report]"`.
"""

import os
import re
import warnings

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
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
STREAM_GROUPS = ('non-recursive', 'single stream', 'dual stream')
DPI = 120


def make_report(root: str, out_dir: str) -> str:
  """Writes out_dir/results.csv, the figures and out_dir/README.md; returns the README's path."""
  rows = results.gather(root)
  os.makedirs(out_dir, exist_ok=True)
  results.write_table(rows, os.path.join(out_dir, 'results.csv'))
  df, cols = _frame(rows)
  settings = list(df['setting'].cat.categories)
  models = list(df['model'].cat.categories)
  tasks = sorted(df['task'].unique())
  final = _at_train(df, 'final')
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

  md += ['## Headline: accuracy at the training length', '']
  stats = _stats(final, [*cols, 'model', 'task', 'metric'])
  for metric in ACCURACY:
    table = _table(stats[stats['metric'] == metric], [*cols, 'model'], 'task', tasks)
    md += [f'### {metric}', '', table, '']

  if 'recipe' in cols:  # a recipe study: what each row costs, and its effect with a CI
    md += ['### Compute per row', '', _compute_table(df, cols), '']
    md += ['### Effects: differences in char_acc with 95% confidence intervals', '']
    md += [_effects_table(final, cols, tasks), '']
    md += [f'### When each row learns: first step with mean char_acc >= {LEARNED}', '']
    md += [_learned_table(df, cols, tasks), '']

  def section(title, name, drawn):
    """Saves the figure of `drawn` = (figure or None, markdown) and returns its markdown."""
    fig, text = drawn
    if fig is None:
      return [f'{title.split(":")[0]}: not drawn, {text}.', '']
    fig.savefig(os.path.join(out_dir, name), dpi=DPI)
    return [f'![{title}]({name})', '', *([text, ''] if text else [])]

  title = 'Figure 1: accuracy by task and rung'
  md += [f'## {title}', '', *section(title, 'fig1_task_rung.png', _fig_task_rung(final, models))]
  per_setting = [
    ('Figure 2: addition accuracy by rung group', 'fig2_addition_groups', _fig_groups),
    ('Figure 3: accuracy by answer position', 'fig3_positions', _fig_positions),
    ('Figure 4: learning curves', 'fig4_curves', _fig_curves),
    ('Figure 5: length generalisation', 'fig5_length', _fig_length),
    ('Figure 6: inference-step scaling', 'fig6_inference', _fig_inference),
  ]
  for title, name, draw in per_setting:
    md += [f'## {title}', '']
    drawn = {s: draw(df[df['setting'] == s], models, tasks) for s in settings}
    if all(fig is None for fig, _ in drawn.values()):  # one note, not one per setting
      md += section(title, '', drawn[settings[0]])
      continue
    for setting, figure in drawn.items():
      suffix = '_' + re.sub(r'[^A-Za-z0-9]+', '_', setting).strip('_') if setting else ''
      md += [f'### {setting}', ''] if setting else []
      md += section(title, f'{name}{suffix}.png', figure)
  for col in (c for c in cols if pd.api.types.is_numeric_dtype(df[c])):  # a line per number
    title = f'Figure 7: accuracy vs {col}'
    md += [
      f'## {title}',
      '',
      *section(title, f'fig7_sweep_{col}.png', _fig_sweep(final, col, cols, models)),
    ]

  if 'recipe' in cols:
    title = 'Figure 8: every row against training compute'
    md += [f'## {title}', '', *section(title, 'fig8_rows_compute.png', _fig_rows(df, tasks))]

  path = os.path.join(out_dir, 'README.md')
  with open(path, 'w') as f:
    f.write('\n'.join(md))
  return path


def _frame(rows: list[dict]) -> tuple[pd.DataFrame, list[str]]:
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
    df['setting'] += ('' if col == cols[0] else ', ') + col + '=' + df[col].map(_fmt)
  order = df.sort_values(cols)['setting'].unique() if cols else ['']
  df['setting'] = pd.Categorical(df['setting'], categories=order, ordered=True)
  return df, cols


def _fmt(value) -> str:
  return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _name(model: str) -> str:
  return f'{model}: {RUNGS[model].title}' if model in RUNGS else model


def _color(model: str):
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


def _at_train(df: pd.DataFrame, kind: str) -> pd.DataFrame:
  return df[(df['kind'] == kind) & (df['eval_length'] == df['train_length'])]


def _stats(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
  """mean, sem and n of `value` over seeds, per combination of `keys`."""
  out = (
    df.groupby(keys, dropna=False, observed=True, sort=True)['value']
    .agg(['mean', 'std', 'count'])
    .reset_index()
  )
  out['sem'] = out['std'] / np.sqrt(out['count'])  # NaN for n = 1: no error bar
  return out.rename(columns={'count': 'n'}).drop(columns='std')


def _cell(mean: float, sem: float, n: int) -> str:
  return f'{mean:.3f} ± {sem:.3f} (n={int(n)})' if n > 1 else f'{mean:.3f} (n=1)'


def _table(stats: pd.DataFrame, index: list[str], column: str, values) -> str:
  """Markdown table of mean ± sem cells: a row per `index` combination, a column per value."""
  rows = []
  for key, group in stats.groupby(index, dropna=False, observed=True, sort=True):
    row = {c: _name(v) if c == 'model' else _fmt(v) for c, v in zip(index, key)}
    cells = group.set_index(column)
    for v in values:
      row[_fmt(v) if column in ('task', 'metric') else f'{column}={_fmt(v)}'] = (
        _cell(*cells.loc[v, ['mean', 'sem', 'n']]) if v in cells.index else '–'
      )
    rows.append(row)
  return markdown_table(rows)


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
    kw = dict(color=_color(m), label=_name(m))
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


def _fig_task_rung(final: pd.DataFrame, models: list[str]):
  stats = _stats(final[final['metric'].isin(ACCURACY)], ['task', 'setting', 'model', 'metric'])
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
        color=_color(m),
        label=_name(m),
        capsize=2,
        error_kw=dict(lw=0.8),
      )
    _accuracy_axis(ax, metric)
    ax.set_title(f'{metric} at the training length (final evaluation)')
  axes[-1].set_xticks(np.arange(len(groups)), groups)
  axes[-1].set_xlabel('task' if groups == list(stats['task'].unique()) else 'task, setting')
  _legend(fig, axes)
  return fig, ''


def _fig_groups(df: pd.DataFrame, models: list[str], tasks: list[str]):
  del tasks
  final = _at_train(df[df['task'] == 'addition'], 'final')
  stats = _stats(final[final['metric'].isin(ACCURACY)], ['model', 'metric'])
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
      for offset, metric, hatch in ((-0.2, 'char_acc', ''), (0.2, 'seq_acc', '//')):
        r = stats[(stats['model'] == m) & (stats['metric'] == metric)]
        if not r.empty:
          ax.bar(
            x + offset,
            r['mean'].iloc[0],
            0.4,
            yerr=r['sem'].iloc[0],
            color=colors[g],
            hatch=hatch,
            edgecolor='black',
            lw=0.5,
            capsize=2,
            error_kw=dict(lw=0.8),
          )
      by_metric = stats[stats['model'] == m].set_index('metric')
      rows.append(
        {
          'group': g,
          'rung': _name(m),
          **{
            metric: _cell(*by_metric.loc[metric, ['mean', 'sem', 'n']])
            if metric in by_metric.index
            else '–'
            for metric in ACCURACY
          },
        }
      )
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
  ax.set_xticks(*zip(*ticks))
  ax.tick_params(axis='x', labelrotation=25)
  for label in ax.get_xticklabels():
    label.set_horizontalalignment('right')
  _accuracy_axis(ax, 'accuracy at the training length')
  ax.set_title('Addition by rung group' + _where(df), pad=22)
  ax.legend(
    handles=[
      Patch(facecolor='white', edgecolor='black', label='char_acc'),
      Patch(facecolor='white', edgecolor='black', hatch='//', label='seq_acc'),
    ],
    loc='upper left',
    fontsize=9,
  )
  return fig, markdown_table(rows)


def _fig_positions(df: pd.DataFrame, models: list[str], tasks: list[str]):
  final = _at_train(df, 'final')
  quartiles = _stats(final[final['metric'].isin(QUARTILES)], ['task', 'model', 'metric'])
  positions = final[final['metric'].str.fullmatch(r'pos\d+')].assign(
    position=lambda d: d['metric'].str[3:].astype(int)
  )
  positions = _stats(positions, ['task', 'model', 'position'])
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
  return fig, _table(quartiles, ['task', 'model'], 'metric', QUARTILES)


def _fig_curves(df: pd.DataFrame, models: list[str], tasks: list[str]):
  curves = _at_train(df, 'curve')
  stats = _stats(curves[curves['metric'].isin(ACCURACY)], ['task', 'model', 'metric', 'step'])
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


def _fig_length(df: pd.DataFrame, models: list[str], tasks: list[str]):
  final = df[(df['kind'] == 'final') & df['metric'].isin(ACCURACY)]
  if final['eval_length'].nunique() < 2:
    return None, 'the runs were evaluated at one length only'
  stats = _stats(final, ['task', 'model', 'metric', 'eval_length'])
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
  return fig, '**char_acc by evaluation length**\n\n' + _table(
    stats[stats['metric'] == 'char_acc'], ['task', 'model'], 'eval_length', lengths
  )


def _fig_inference(df: pd.DataFrame, models: list[str], tasks: list[str]):
  rows = df[(df['kind'] == 'inference') & (df['metric'] == 'char_acc')]
  if rows.empty:
    return None, "no 'inference' rows (re-evaluations with more steps, inference_eval.json)"
  stats = _stats(rows, ['task', 'eval_length', 'model', 'inference_steps'])
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
  return fig, '**char_acc by inference steps**\n\n' + _table(
    stats, ['task', 'eval_length', 'model'], 'inference_steps', steps
  )


def _fig_sweep(final: pd.DataFrame, col: str, cols: list[str], models: list[str]):
  """Accuracy vs one setting column: a row of subplots per combination of the others."""
  others = [c for c in cols if c != col]
  stats = _stats(final[final['metric'].isin(ACCURACY)], [*others, 'task', 'model', 'metric', col])
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
    prefix = ''.join(f'{c}={_fmt(v)}, ' for c, v in combo.items())
    for j, (task, metric) in enumerate(panels):
      ax = axes[i, j]
      _lines(ax, sub[(sub['task'] == task) & (sub['metric'] == metric)], col, models)
      ax.set_xticks(sorted(stats[col].unique()))
      _accuracy_axis(ax, metric)
      ax.set(title=f'{prefix}{task}: {metric}', xlabel=col)
  fig.suptitle(f'Accuracy at the training length vs {col}')
  _legend(fig, axes)
  return fig, ''


COMPUTE_NOTE = (
  'forward: block passes of one forward (all steps); grad: those whose parameters '
  'get gradient; backward: those the backward pass runs; train/token: passes run '
  'forward or backward per position of a batch over its supervision passes; '
  'inference/token: passes per generated token; training forward: max_steps x '
  'inference/token, the forward passes a position of the training stream sees in a '
  'run (compute-matched controls equal it). docs/compute.md.'
)


def _compute_table(df: pd.DataFrame, cols: list[str]) -> str:
  """The compute columns of each (setting, rung) row; constant within a run."""
  keys = [*cols, 'model']
  first = df.groupby(keys, observed=True, sort=True).first().reset_index()
  rows = [
    {
      **{c: _name(r[c]) if c == 'model' else _fmt(r[c]) for c in keys},
      'forward': _fmt(r['forward_passes']),
      'grad': _fmt(r['grad_passes']),
      'backward': _fmt(r['backward_passes']),
      'train/token': _fmt(r['train_passes_per_token']),
      'inference/token': _fmt(r['inference_passes']),
      'training forward': _fmt(r['max_steps'] * r['inference_passes']),
    }
    for _, r in first.iterrows()
  ]
  return markdown_table(rows) + '\n\n' + COMPUTE_NOTE


def _fig_rows(df: pd.DataFrame, tasks: list[str]):
  """char_acc at the training length of every (setting, rung) row on one axis per task,
  against the forward block passes trained so far (step x inference passes per token),
  so a recipe and its compute-matched control end at the same x."""
  curves = _at_train(df, 'curve')
  curves = curves[curves['metric'] == 'char_acc'].copy()
  if curves.empty:
    return None, "no learning curves ('curve' rows from metrics.jsonl)"
  curves['compute'] = curves['step'] * curves['inference_passes']
  curves['row'] = (
    curves['model'].astype(str) + ' ' + curves['setting'].astype(str).str.replace('recipe=', '')
  )
  stats = _stats(curves, ['task', 'row', 'compute'])
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


# The references every row of a recipe study is compared with: the paper's trm
# at its base step count, and the paper's best rung.
REFERENCES = (('trm', "the paper's trm"), ('ut_level1', 'ut_level1'))


def _effects_table(final: pd.DataFrame, cols: list[str], tasks: list[str]) -> str:
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
        with warnings.catch_warnings():  # seeds that agree exactly: no spread to estimate
          warnings.simplefilter('ignore', RuntimeWarning)
          ci = scipy_stats.ttest_ind(x, ref, equal_var=False).confidence_interval(0.95)
        d = x.mean() - ref.mean()
        if not np.isfinite(ci.low):  # both without spread: the difference is exact
          ci = type(ci)(d, d)
        row[f'vs {label}'] = f'{d:+.3f} [{ci.low:+.3f}, {ci.high:+.3f}]'
      rows.append(row)
  return markdown_table(rows) + (
    "\n\nDifference of means over seeds, [95% CI] from Welch's t; an interval that "
    'excludes 0 is a difference at the 5% level. The references are the rungs with the '
    "paper's recipe at the base step count."
  )


LEARNED = 0.9  # char_acc (mean over seeds) at which a row counts as having learned the task


def _learned_table(df: pd.DataFrame, cols: list[str], tasks: list[str]) -> str:
  """Per row and task, the first evaluation step (and the training forward passes per
  position by then) at which the seed-mean char_acc at the training length reaches LEARNED."""
  curves = _at_train(df, 'curve')
  curves = curves[curves['metric'] == 'char_acc']
  stats = _stats(curves, [*cols, 'model', 'task', 'step', 'inference_passes'])
  rows = []
  for key, g in stats.groupby([*cols, 'model'], observed=True, sort=True):
    row = {c: _name(v) if c == 'model' else _fmt(v) for c, v in zip([*cols, 'model'], key)}
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
