"""The benchmark's output: markdown tables and JSON files.

Ratios against the paper's code are measured side by side on one machine
(`benchmarks/side_by_side.py`), never against timings stored from another.
"""

import json
import os
import re

from artrm.tables import markdown_table


def profiles(row: dict) -> list[tuple[str, dict]]:
  """(what, summary) of each profiler trace a rung's row holds."""
  out = [('train step', row['train']['profile'])] if 'profile' in row.get('train', {}) else []
  return out + [
    (f'generate_cached L={L}', by_fn['generate_cached']['profile'])
    for L, by_fn in row['eval'].items()
    if 'profile' in by_fn['generate_cached']
  ]


def summary_row(rung: str, row: dict) -> dict[str, str]:
  """One table row of formatted cells."""
  cells = {'rung': rung, 'params': f'{row["n_params"]:,}'}
  t = row.get('train')
  if t:
    cells.update(
      {
        'passes fwd/bwd': f'{t["fwd_passes"]:g}/{t["bwd_passes"]:g}',
        'compile s': f'{t["compile_seconds"]:.1f}',
        'step ms': f'{1e3 * t["step_seconds"]:.2f}',
        'tokens/s': f'{t["tokens_per_sec"]:,.0f}',
        'padded tokens/s': f'{t["padded_tokens_per_sec"]:,.0f}',
        'TFLOP/s': f'{t["flops_per_sec"] / 1e12:.3f}',
        'MFU': f'{100 * t["mfu"]:.1f}%' if 'mfu' in t else '-',
      }
    )
  for L, by_fn in row['eval'].items():
    for fn in ('generate', 'generate_cached'):
      if fn in by_fn:
        cells[f'{fn} seq/s L={L}'] = f'{by_fn[fn]["sequences_per_sec"]:,.1f}'
  cells['peak MiB'] = f'{row["peak_memory_bytes"] / 2**20:,.0f}'
  return cells


def markdown(result: dict, rows: list[dict] | None = None) -> str:
  """The setup in a line, then the table of `rows` (default: `summary_row` of each rung)."""
  s, d = result['setup'], result['device']
  header = (
    f'{s["name"]}: n_embd {s["n_embd"]}, {s["n_head"]} heads, budget {s["budget"]}, '
    f'batch {s["batch_size"]}, {s["task"]} L={s["train_length"]}, block_size '
    f'{s["block_size"]} on {d["device_kind"]} ({d["platform"]}, jax {d["jax"]}).'
  )
  rows = rows or [summary_row(rung, row) for rung, row in result['rungs'].items()]
  return header + '\n\n' + markdown_table(rows)


def default_path(result: dict) -> str:
  device = re.sub(r'[^a-z0-9]+', '_', result['device']['device_kind'].lower()).strip('_')
  return os.path.join('results', 'benchmarks', f'{device}_{result["setup"]["name"]}.json')


def write_results(result: dict, path: str | None = None) -> str:
  path = path or default_path(result)
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'w') as f:
    json.dump(result, f, indent=1)
  return path
