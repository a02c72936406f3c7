"""Training throughput of a time-boxed suite, from its runs' metrics.jsonl.

  python benchmarks/grid_rates.py benchmarks/results/h200_paper_run

A folder holds one subfolder per call (`call1`, `call2`, ...), each with
`runs/<run>/metrics.jsonl` as that call left it, and `steps.tsv` or a number of
seconds in `grid_seconds` (the grid's wall time in that call). A resumed run
restarts at its last periodic checkpoint (every max_steps / 10 steps), so the
steps a call executed are counted from there. Prints a markdown table per run
and the aggregate steps per second of each call.
"""

import glob
import json
import os
import statistics
import sys


def records(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def last_train_step(recs):
  return max((r['step'] for r in recs if r['kind'] == 'train'), default=0)


def grid_seconds(call_dir):
  tsv = os.path.join(call_dir, 'steps.tsv')
  if os.path.exists(tsv):
    with open(tsv) as f:
      rows = [line.split('\t') for line in f.read().splitlines()]
    return sum(int(r[2]) for r in rows if r[0] == 'grid')
  with open(os.path.join(call_dir, 'grid_seconds')) as f:
    return float(f.read())


def main(root):
  calls = sorted(d for d in glob.glob(os.path.join(root, 'call*')) if os.path.isdir(d))
  reached = {}  # run -> last step after each call
  rows = {}
  for call in calls:
    executed = 0
    for run_dir in sorted(glob.glob(os.path.join(call, 'runs', '*'))):
      run = os.path.basename(run_dir)
      recs = records(os.path.join(run_dir, 'metrics.jsonl'))
      with open(os.path.join(run_dir, 'config.json')) as f:
        config = json.load(f)
      every = config['checkpoint']['every_steps'] or max(1, config['max_steps'] // 10)
      before = reached.get(run, 0) // every * every
      after = last_train_step(recs)
      executed += max(0, after - before)
      reached[run] = after
      rates = [r['steps_per_sec'] for r in recs if r['kind'] == 'train' and r['step'] > before]
      row = rows.setdefault(run, dict(steps=[], rates=[]))
      row['steps'].append(after)
      row['rates'] += rates
      row['finished'] = os.path.exists(os.path.join(run_dir, 'final_eval.json'))
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
