"""ms per training step with several seeds vmapped, at the shape the CPU studies run
(copy at L = 8, width 64, 4 heads, budget 12, batch 32, dropout 0.1).

Unlike `artrm bench --seeds`, it runs on any commit of artrm (it only needs
`bench_train`), so a change can be timed against the code before it: run it
from each checkout's root, interleaved.

    python benchmarks/vmapped_seeds.py --rungs=ut_level1,ut,trm --seeds=3 [--out=path.json]
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.getcwd())  # the checkout it is run from, not the installed one

from artrm import parallel  # noqa: E402
from artrm.bench import setups, timing  # noqa: E402
from artrm.training import builders  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rungs', default='ut_level1,ut,trm')
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--out')
  args = parser.parse_args()
  out = {}
  for rung in args.rungs.split(','):
    c = setups.run_config(setups.get_setup('small'), rung)
    c.update(num_seeds=args.seeds, task='copy', train_length=8)
    c.model.update(n_embd=64, n_head=4)
    r, _ = timing.bench_train(c, builders.run_model(c), args.steps, 3, parallel.data_mesh())
    out[rung] = dict(step_ms=1000 * r['step_seconds'], compile_s=r['compile_seconds'])
    print(rung, {k: round(v, 1) for k, v in out[rung].items()}, flush=True)
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(dict(seeds=args.seeds, rungs=out), f, indent=1)


if __name__ == '__main__':
  main()
