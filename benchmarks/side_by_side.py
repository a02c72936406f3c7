"""artrm against the paper's PyTorch code, timed in one invocation on one machine.

CPUs differ by 2-3x in float32 GEMM speed, so a ratio between the two codes only
means something when both ran on the same machine; this script runs both and
prints their timings, ratio per rung and the machine. Set the paper's code up once,
in its own venv (torch, pytorch-lightning and datasets, which its packages import;
PyPI's torch is fine on CPU):

    git clone https://github.com/pauliusrauba/autoregressive-TRM ../autoregressive-TRM
    python3.11 -m venv .venv-paper
    .venv-paper/bin/pip install torch pytorch-lightning datasets \\
        --extra-index-url https://download.pytorch.org/whl/cpu

then, from the repository root with artrm's venv active, on a quiet machine:

    python benchmarks/side_by_side.py --paper_checkout=../autoregressive-TRM \\
        --paper_python=.venv-paper/bin/python

Setups are `artrm bench`'s (`small`, `paper`: a training step; `eval`: decoding at
L = 10 and 50): `train`, the median ms per step of each; `decode`, ms per sequence
of the paper's evaluator (one prompt at a time, a full forward per token) against
`artrm bench`'s batched decoding (`generate`: full forwards, `generate_cached`: the
KV cache). A ratio is the paper's ms over artrm's: above 1, artrm is faster. Both
codes use every core. The JSON (`--out`) holds every number and the machine.
"""

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile

from artrm.bench import setups
from artrm.models import RUNGS
from artrm.tables import markdown_table

HERE = os.path.dirname(os.path.abspath(__file__))


def machine() -> dict:
  """The CPU model (from /proc/cpuinfo where there is one) and the core count."""
  model = platform.processor() or platform.machine()
  if os.path.exists('/proc/cpuinfo'):
    with open('/proc/cpuinfo') as f:
      names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
    model = names[0] if names else model
  return {'cpu': model, 'cores': os.cpu_count()}


def check_paths(paper_checkout: str, paper_python: str) -> None:
  """Exit with one line naming what is missing, before any timing starts."""
  if not os.path.isfile(os.path.join(paper_checkout, 'models', '__init__.py')):
    sys.exit(f"side_by_side: no paper checkout at {paper_checkout!r} (see this script's docstring)")
  if not os.access(paper_python, os.X_OK):
    sys.exit(f"side_by_side: no python at {paper_python!r} (see this script's docstring)")


def ratio_rows(paper: dict, ours: dict) -> list[dict]:
  """One row per rung and measure: ms of each code and the paper's over artrm's.

  `paper` is `paper_timing.py`'s output; `ours` is `artrm bench`'s result JSON.
  """
  rows = []
  for rung, row in ours['rungs'].items():
    if rung in paper['train_ms']:
      rows.append(
        _row(rung, 'train ms/step', paper['train_ms'][rung], 1e3 * row['train']['step_seconds'])
      )
    for L, by_fn in row.get('eval', {}).items():
      for fn in ('generate', 'generate_cached'):
        if fn in by_fn and rung in paper['eval_ms'].get(str(L), {}):
          theirs, ms = paper['eval_ms'][str(L)][rung], 1e3 / by_fn[fn]['sequences_per_sec']
          rows.append(_row(rung, f'decode ms/seq L={L}, {fn}', theirs, ms))
  return rows


def _row(rung, measure, paper_ms, artrm_ms):
  return {
    'rung': rung,
    'measure': measure,
    'paper ms': round(paper_ms, 3),
    'artrm ms': round(artrm_ms, 3),
    'ratio': round(paper_ms / artrm_ms, 2),
  }


def _paper(args, setup, rungs):
  spec = dataclasses.asdict(setup) | dict(
    rungs=rungs, steps=args.steps, warmup=args.warmup, eval_n=args.eval_n
  )
  cmd = [args.paper_python, os.path.join(HERE, 'paper_timing.py'), args.paper_checkout]
  out = subprocess.run(cmd + [json.dumps(spec)], check=True, stdout=subprocess.PIPE, text=True)
  return json.loads(out.stdout.splitlines()[-1])  # the paper's code prints too; its JSON is last


def _artrm(args, name, rungs, tmp):
  path = os.path.join(tmp, f'{name}.json')
  cmd = [sys.executable, '-m', 'artrm', 'bench', f'--setup={name}', f'--rungs={",".join(rungs)}']
  cmd += [f'--steps={args.steps}', f'--warmup={args.warmup}', f'--out={path}']
  cmd += [f'--eval_repeats={args.eval_repeats}']
  subprocess.run(cmd, check=True, stdout=sys.stderr)
  with open(path) as f:
    return json.load(f)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--paper_checkout', required=True, help='a clone of the paper repository')
  p.add_argument('--paper_python', required=True, help="the python of the paper's venv")
  p.add_argument('--setups', default='small,paper,eval', help='artrm bench setups, comma separated')
  p.add_argument('--rungs', default=','.join(RUNGS), help='comma separated')
  p.add_argument('--steps', type=int, default=20, help='timed training steps (median)')
  p.add_argument('--warmup', type=int, default=3, help='untimed steps first')
  p.add_argument('--eval_n', type=int, default=10, help="prompts the paper's evaluator decodes")
  p.add_argument(
    '--eval_repeats', type=int, default=1, help="timed calls of artrm's decoders per length"
  )
  p.add_argument('--out', default='results/benchmarks/side_by_side.json')
  args = p.parse_args(argv)
  check_paths(args.paper_checkout, args.paper_python)
  rungs, result = args.rungs.split(','), {'machine': machine(), 'setups': {}}
  with tempfile.TemporaryDirectory() as tmp:
    for name in args.setups.split(','):
      paper, ours = _paper(args, setups.get_setup(name), rungs), _artrm(args, name, rungs, tmp)
      rows = ratio_rows(paper, ours)
      result['setups'][name] = {'paper': paper, 'artrm': ours, 'rows': rows}
      print(f'\n{name}: paper code (torch {paper["torch"]}, {paper["threads"]} threads) vs artrm')
      print(markdown_table(rows))
  m = result['machine']
  print(f'\nMachine: {m["cpu"]}, {m["cores"]} cores. Ratio: paper ms / artrm ms.')
  os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=1)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
