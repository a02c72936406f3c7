"""Where one run of a suite spends its time: building the fresh state, compiling the
training step, evaluating (the first evaluation compiles the decoders), checkpointing,
and the steps (the rest).

It trains the suite's run named by `--run` (as `artrm suite` names it) into a fresh
`--workdir` with the artrm of the directory it is run from, so a change can be timed
against an older checkout. Unset `JAX_COMPILATION_CACHE_DIR` so that compiles count. In
the studies' arrangement on a 2-core host, one run per core:

    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false taskset -c 0 python benchmarks/run_phases.py \
      --suite=experiments/why_trm.py:runlocal,only=copy --run=task=copy,name=trm --workdir=/tmp/p
"""

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.getcwd())  # the checkout it is run from, not the installed one

from artrm import workdir as workdir_lib  # noqa: E402
from artrm.tools import suites  # noqa: E402
from artrm.training import checkpointing, train  # noqa: E402

PHASES = {  # phase: (object, attribute) whose calls it sums
  'init': (train, 'init_seeds'),
  'evaluate': (train, 'evaluate_seeds'),
  'checkpoint': (checkpointing.RunCheckpoints, 'save'),
}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--suite', required=True)
  parser.add_argument('--run', required=True, help='a run name of the suite')
  parser.add_argument('--workdir', required=True, help='emptied first')
  parser.add_argument('--out')
  args = parser.parse_args()
  runs = {r.name: r for r in suites.suite_runs(args.suite, args.workdir)}
  if args.run not in runs:
    raise SystemExit(f'--run={args.run!r} is not in the suite; its runs: {sorted(runs)}')
  config = suites.run_config(args.suite, runs[args.run])
  config.log.progress_bar = False

  calls = {name: [] for name in PHASES}
  for name, (owner, attr) in PHASES.items():
    fn = getattr(owner, attr)

    def timed(*a, _fn=fn, _name=name, **k):
      t = time.perf_counter()
      out = _fn(*a, **k)
      calls[_name].append(time.perf_counter() - t)
      return out

    setattr(owner, attr, timed)
  shutil.rmtree(args.workdir, ignore_errors=True)
  t = time.perf_counter()
  train.train_and_evaluate(config, args.workdir)
  total = time.perf_counter() - t
  setup = workdir_lib.read_metrics(args.workdir, 'setup')[0]
  phases = {name: sum(v) for name, v in calls.items()}
  phases['first_evaluation'] = calls['evaluate'][0]
  phases['compile_step'] = setup['compile_seconds']
  phases['steps_and_rest'] = total - sum(v for k, v in phases.items() if k != 'first_evaluation')
  out = dict(
    run=args.run, total_seconds=total, seconds=phases, calls={k: len(v) for k, v in calls.items()}
  )
  print(json.dumps(out, indent=1), flush=True)
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(out, f, indent=1)


if __name__ == '__main__':
  main()
