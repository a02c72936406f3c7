"""The suite report, on synthetic run workdirs (no training): files, images, numbers."""

import json
import os
import re
import zlib

import numpy as np
import pytest

pytest.importorskip('matplotlib')
pytest.importorskip('pandas')

from matplotlib import image  # noqa: E402

from artrm.tools import report  # noqa: E402

TRAIN_LENGTH = 5
STEPS = 200


def _metrics(per_position: np.ndarray, seq_acc: float) -> dict:
  """The metrics of artrm.metrics.answer_metrics, from per-position accuracies."""
  out = dict(
    char_acc=per_position.mean(),
    seq_acc=seq_acc,
    first_char_acc=per_position[0],
    last_char_acc=per_position[-1],
  )
  for q, positions in enumerate(np.array_split(np.arange(per_position.size), 4), start=1):
    if positions.size:
      out[f'q{q}'] = per_position[positions].mean()
  return {**{k: float(v) for k, v in out.items()}, 'per_position': per_position.tolist()}


def write_run(
  root,
  model: str,
  task: str,
  seeds=(0, 1),
  n_embd=64,
  lengths=(5, 10),
  curves=True,
  inference=True,
  fixed: dict | None = None,
  recipe: dict | None = None,
):
  """A finished run's workdir in the formats train.py and results.run_rows use.

  `fixed` = {seed: acc} makes every answer position at the training length score `acc`.
  """
  workdir = os.path.join(
    root,
    f'task={task},name={model},n_embd={n_embd}'
    + ''.join(f',{k}={v}' for k, v in (recipe or {}).items()),
  )
  os.makedirs(workdir)
  config = dict(
    recipe=recipe or {},
    task=task,
    train_length=TRAIN_LENGTH,
    budget=6,
    max_steps=STEPS,
    model=dict(name=model, n_embd=n_embd, n_head=4, n_layer=2, n_outer_loops=2, n_inner_loops=2),
  )
  rng = np.random.default_rng(zlib.crc32(os.path.basename(workdir).encode()))

  def by_length(seed, scale=1.0):
    out = {}
    for L in lengths:
      answer = L + 1 if task == 'addition' else L
      if fixed and L == TRAIN_LENGTH:
        acc = np.full(answer, fixed[seed])
      else:
        acc = np.clip(
          scale * (0.95 - 0.03 * np.arange(answer) * (L / TRAIN_LENGTH)) - rng.uniform(0, 0.2), 0, 1
        )
      out[str(L)] = _metrics(acc, float(np.prod(acc**0.5)))
    return out

  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(config, f)
  with open(os.path.join(workdir, 'final_eval.json'), 'w') as f:
    json.dump(dict(step=STEPS, results={str(s): by_length(s) for s in seeds}), f)
  if curves:
    with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
      for step in (50, 100, 150, 200):
        for s in seeds:
          scalars = {
            f'L{L}/{k}': v
            for L, m in by_length(s, step / STEPS).items()
            for k, v in m.items()
            if k != 'per_position'
          }
          f.write(json.dumps(dict(step=step, kind='eval', seed=s, **scalars)) + '\n')
  if inference:
    with open(os.path.join(workdir, 'inference_eval.json'), 'w') as f:
      scaling = {str(k): {str(s): by_length(s, min(1, k / 6)) for s in seeds} for k in (2, 4, 6, 8)}
      json.dump(dict(step=STEPS, results=scaling), f)


def check_images(out_dir, md):
  pngs = sorted(p for p in os.listdir(out_dir) if p.endswith('.png'))
  assert pngs
  for p in pngs:
    assert f']({p})' in md, p
    h, w, channels = image.imread(os.path.join(out_dir, p)).shape
    assert h > 200 and w > 200 and channels in (3, 4)
  return pngs


def test_report_of_a_ladder_suite(tmp_path):
  root = tmp_path / 'length_gen'
  for task in ('addition', 'copy'):
    for model in ('gpt', 'ut', 'trm'):
      write_run(
        root, model, task, fixed={0: 0.8, 1: 0.6} if (model, task) == ('trm', 'addition') else None
      )
  out = tmp_path / 'report'
  path = report.make_report(str(root), str(out))
  assert path == str(out / 'README.md')
  assert (out / 'results.csv').stat().st_size > 0
  md = open(path).read()
  pngs = check_images(out, md)
  assert pngs == [
    'fig1_task_rung.png',
    'fig2_addition_groups.png',
    'fig3_positions.png',
    'fig4_curves.png',
    'fig5_length.png',
    'fig6_inference.png',
  ]
  for title in ('Figure 1', 'Figure 2', 'Figure 3', 'Figure 4', 'Figure 5', 'Figure 6'):
    assert title in md
  assert 'not drawn' not in md
  # trm on addition, char_acc at L = 5: seeds 0.8 and 0.6 -> mean 0.7, sem = 0.1414 / sqrt(2) = 0.1.
  headline = md.split('### char_acc')[1].split('### seq_acc')[0]
  row = next(line for line in headline.splitlines() if line.startswith('| trm: Autoregressive TRM'))
  assert '0.700 ± 0.100 (n=2)' in row


def test_report_of_a_sweep_notes_what_it_lacks(tmp_path):
  """Two widths, one seed, one length, no curves: settings appear, missing figures are noted."""
  root = tmp_path / 'widths'
  for n_embd in (32, 64):
    for model in ('gpt', 'trm'):
      write_run(
        root,
        model,
        'copy',
        seeds=(0,),
        n_embd=n_embd,
        lengths=(TRAIN_LENGTH,),
        curves=False,
        inference=False,
      )
  out = tmp_path / 'report'
  md = open(report.make_report(str(root), str(out))).read()
  pngs = check_images(out, md)
  assert 'fig7_sweep_n_embd.png' in pngs and 'fig3_positions_n_embd_32.png' in pngs
  assert '| n_embd | model' in md
  assert '(n=1)' in md and '±' not in md.split('## Headline')[1].split('## Figure 1')[0]
  for missing in ('Figure 2', 'Figure 4', 'Figure 5', 'Figure 6'):
    assert md.count(f'{missing}: not drawn') == 1  # one note, not one per setting


def test_report_of_a_recipe_study_shows_compute(tmp_path):
  """Rows that differ in recipe: a compute table per row and every row's curve against compute."""
  root = tmp_path / 'why'
  write_run(root, 'gpt', 'copy')
  write_run(root, 'trm', 'copy', fixed={0: 0.2, 1: 0.4})
  write_run(root, 'trm', 'copy', recipe={'n_sup': 2, 'grad_reach': 'all'}, fixed={0: 0.9, 1: 1.0})
  md = open(report.make_report(str(root), str(tmp_path / 'report'))).read()
  assert 'fig8_rows_compute.png' in check_images(tmp_path / 'report', md)
  table = md.split('### Compute per row')[1].split('### Effects')[0]
  rows = {line.split('|')[1].strip(): line for line in table.splitlines() if '| trm' in line}
  # budget 6, trm (1 step of 2 x 3): the paper back-propagates the last cycle (3 of 6 passes);
  # n_sup = 2 with reach all: every pass, twice per batch, so 200 steps see 2 x 200 x 6 forward.
  cells = lambda row: [c.strip() for c in rows[row].split('|')[3:-1]]
  assert cells('paper') == ['6', '3', '3', '9', '6', '1200']
  assert cells('grad_reach=all,n_sup=2') == ['6', '6', '6', '24', '12', '2400']
  effects = md.split('### Effects')[1].split('## Figure 1')[0]
  row = next(line for line in effects.splitlines() if 'grad_reach=all' in line)
  diff, low, high = (float(v) for v in re.findall(r'[+-]\d\.\d+', row.split('|')[4]))
  assert diff == 0.65 and low < 0 < 0.65 < high and abs((high - diff) - (diff - low)) < 2e-3
  paper = next(line for line in effects.splitlines() if '| paper' in line and '| trm' in line)
  assert paper.split('|')[4].strip() == '–'  # the reference is not compared with itself
  learned = md.split('### When each row learns')[1].split('## Figure 1')[0]
  row = next(line for line in learned.splitlines() if 'grad_reach=all' in line)
  # Fixed accuracies hold from the first evaluation (step 50): the mean 0.95 is learned
  # after 50 x 12 forward passes per position (n_sup 2 x 6); the paper's mean 0.3 never.
  assert row.split('|')[3].strip() == 'step 50 (600 passes)'
  paper = next(line for line in learned.splitlines() if '| paper' in line and '| trm' in line)
  assert paper.split('|')[3].strip() == 'not learned'
