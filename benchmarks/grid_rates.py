"""Training throughput of a time-boxed suite, from its runs' metrics.jsonl.

  python benchmarks/grid_rates.py results/benchmarks/h200_paper_run

A folder holds one subfolder per call (`call1`, `call2`, ...), each with
`runs/<run>/metrics.jsonl` as that call left it, and `steps.tsv` or a number of
seconds in `grid_seconds` (the grid's wall time in that call). A call's steps of a
run count from its last `setup` record, logged at the step the run started or
resumed from. Prints each call's steps and steps per second over all runs, then a
markdown table per run.
"""

import glob
import os
import statistics
import sys

from artrm import workdir as workdir_lib


def grid_seconds(call_dir):
  tsv = os.path.join(call_dir, 'steps.tsv')
  if os.path.exists(tsv):
    with open(tsv) as f:
      rows = [line.split('\t') for line in f.read().splitlines()]
    return sum(int(r[2]) for r in rows if r[0] == 'grid')
  with open(os.path.join(call_dir, 'grid_seconds')) as f:
    return float(f.read())


def main(root):
  rows = {}
  for call in sorted(d for d in glob.glob(os.path.join(root, 'call*')) if os.path.isdir(d)):
    executed = 0
    for run_dir in sorted(glob.glob(os.path.join(call, 'runs', '*'))):
      recs = workdir_lib.read_metrics(run_dir)
      start = [r['step'] for r in recs if r['kind'] == 'setup'][-1]
      train = [r for r in recs if r['kind'] == 'train' and r['step'] > start]
      last = train[-1]['step'] if train else start
      executed += last - start
      row = rows.setdefault(os.path.basename(run_dir), dict(steps=[], rates=[]))
      row['steps'].append(last)
      row['rates'] += [r['steps_per_sec'] for r in train]
      row['finished'] = workdir_lib.read_final_eval(run_dir) is not None
    seconds = grid_seconds(call)
    print(
      f'{os.path.basename(call)}: {executed:,} steps executed in {seconds:.0f} s of grid, '
      f'{executed / seconds:.1f} steps/s over all runs'
    )
  print('\n| run | last step after each call | median steps/s in flight | finished |')
  print('| --- | --- | --- | --- |')
  for run, row in rows.items():
    median = statistics.median(row['rates']) if row['rates'] else float('nan')
    steps = ' / '.join(map(str, row['steps']))
    print(f'| {run} | {steps} | {median:.1f} | {"yes" if row["finished"] else "no"} |')


if __name__ == '__main__':
  main(sys.argv[1])
