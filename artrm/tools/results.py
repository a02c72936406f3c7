"""The results store: run workdirs gathered into one tidy table (CSV / Parquet).

One row per (run, seed, step, eval length, metric), with the config fields a
report groups by. Sources in each workdir: config.json, final_eval.json
(kind 'final', with per-position accuracies), metrics.jsonl eval records
(kind 'curve', the learning curves) and inference_eval.json (kind
'inference', re-evaluations with more inference steps). No external service.
"""

import csv
import dataclasses
import glob
import os

from artrm import workdir as workdir_lib
from artrm.models.config import ModelConfig, get_rung, normalize_budget
from artrm.models.recipe import Recipe, compute_record
from artrm.workdir import metric_rows

CONFIG_COLUMNS = {
  'model': 'model.name',
  'task': 'task',
  'train_length': 'train_length',
  'train_length_min': 'train_length_min',  # 0: every row at train_length
  'budget': 'budget',
  'n_embd': 'model.n_embd',
  'n_head': 'model.n_head',
  'n_layer': 'model.n_layer',
  'n_outer_loops': 'model.n_outer_loops',
  'n_inner_loops': 'model.n_inner_loops',
  'max_steps': 'max_steps',
  'pos_encoding': 'model.pos_encoding',  # None in configs saved before it
  'input_injection': 'model.input_injection',
}
# The run's training recipe (its non-default switches, 'paper' if none) and
# compute (docs/compute.md), so that recipes compare at matched compute.
COMPUTE_COLUMNS = (
  'recipe',
  'forward_passes',
  'grad_passes',
  'backward_passes',
  'train_passes_per_token',
  'inference_passes',
)
COLUMNS = [
  'suite',
  'run',
  *CONFIG_COLUMNS,
  *COMPUTE_COLUMNS,
  'seed',
  'kind',
  'step',
  'inference_steps',
  'eval_length',
  'metric',
  'value',
]


def _get(config: dict, dotted: str):
  for key in dotted.split('.'):
    config = config.get(key, {}) if isinstance(config, dict) else {}
  return None if config == {} else config


def run_compute(config: dict, inference_steps: int | None = None) -> dict:
  """The COMPUTE_COLUMNS of a run's saved config (inference_passes at `inference_steps`,
  default the trained steps)."""
  mc = ModelConfig.from_mapping(config['model'])
  mc = normalize_budget(mc, config['budget']) if config.get('budget') else mc
  recipe = Recipe.from_mapping(config.get('recipe'))
  changed = [
    f'{f.name}={getattr(recipe, f.name)}'
    for f in dataclasses.fields(Recipe)
    if getattr(recipe, f.name) != f.default
  ]
  record = compute_record(get_rung(mc.name), mc, recipe, inference_steps)
  return dict(recipe=','.join(changed) or 'paper', **{k: record[k] for k in COMPUTE_COLUMNS[1:]})


def run_rows(workdir: str, suite: str = '') -> list[dict]:
  config = workdir_lib.read_config(workdir)
  base = dict(
    suite=suite,
    run=os.path.basename(os.path.normpath(workdir)),
    **{col: _get(config, key) for col, key in CONFIG_COLUMNS.items()},
    **run_compute(config),
  )
  rows = []
  final = workdir_lib.read_final_eval(workdir)
  if final is not None:
    for seed, by_length in final['results'].items():
      rows += metric_rows(by_length, **base, seed=seed, kind='final', step=final['step'])
  for record in workdir_lib.read_metrics(workdir, 'eval'):
    for key, value in record.items():
      if key.startswith('L') and '/' in key:
        length, metric = key[1:].split('/', 1)
        rows.append(
          {
            **base,
            'seed': record['seed'],
            'kind': 'curve',
            'step': record['step'],
            'eval_length': int(length),
            'metric': metric,
            'value': float(value),
          }
        )
  scaling = workdir_lib.read_inference_eval(workdir)
  if scaling is not None:
    for steps, by_seed in scaling['results'].items():
      for seed, by_length in by_seed.items():
        rows += metric_rows(
          by_length,
          **{**base, **run_compute(config, steps)},
          seed=seed,
          kind='inference',
          step=scaling['step'],
          inference_steps=steps,
        )
  return rows


def gather(root: str) -> list[dict]:
  """Rows of every run under `root` (a suite's directory)."""
  suite = os.path.basename(os.path.normpath(root))
  rows = []
  for config_path in sorted(
    glob.glob(os.path.join(root, '**', workdir_lib.CONFIG), recursive=True)
  ):
    rows += run_rows(os.path.dirname(config_path), suite)
  if not rows:
    raise FileNotFoundError(f'No runs under {root}: run the suite first (artrm suite ...).')
  return rows


def write_table(rows: list[dict], path: str) -> str:
  """CSV, or Parquet when `path` ends in .parquet (needs pandas + pyarrow)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if path.endswith('.parquet'):
    import pandas as pd

    pd.DataFrame(rows, columns=COLUMNS).to_parquet(path)
    return path
  with open(path, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=COLUMNS)
    w.writeheader()
    w.writerows(rows)
  return path
