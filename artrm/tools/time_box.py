"""How much of a suite fits a time box, estimated from `artrm bench` step and compile times.

  python -m artrm.tools.time_box BENCH SUITE SLOTS SECONDS PLAN_JSON

BENCH: a bench JSON, or a folder of them (the bf16 ones are read).

Runs that share one GPU overlap little (docs/performance.md, "On a GPU" has the
measurement), so the estimate is serial,
task by task in the suite's order. It counts no
evaluation. A bench times a step at initialisation, where ACT halts after a few
passes; trained, the ACT rungs ran their whole budget there, and `ut` then trained
about as fast as `gpt`, so a row that ran fewer passes than the run's budget
counts at least the mean step of the rows that ran all of it. When not every
task fits, `only` names those that do (at least the first): the suite argument of
experiments/length_gen.py.
"""

import glob
import json
import os
import sys

from artrm.tools import suites


def bench_rows(bench: str) -> dict[str, dict]:
  """{rung: its training row} of the bench JSON `bench`, or of every bf16 one in that folder."""
  rows = {}
  paths = (
    sorted(glob.glob(os.path.join(bench, '*bfloat16*.json'))) if os.path.isdir(bench) else [bench]
  )
  for path in paths:
    with open(path) as f:
      rows.update({rung: row['train'] for rung, row in json.load(f)['rungs'].items()})
  return rows


def plan(spec: str, bench: dict[str, dict], seconds: float, slots: int = 1) -> dict:
  """The estimate per task and the `only` that fits `seconds` (empty: everything fits, or
  no bench to estimate from)."""
  runs = suites.suite_runs(spec, '/unused')
  out = dict(suite=spec, runs=len(runs), slots=slots, seconds_left=seconds, only='')
  if not bench:
    return out
  keys = ('step_seconds', 'compile_seconds', 'fwd_passes')
  mean = {k: sum(b[k] for b in bench.values()) / len(bench) for k in keys}
  by_task = {}
  for run in runs:
    c = suites.run_config(spec, run)
    b = bench.get(c.model.name, mean)
    full = [r['step_seconds'] for r in bench.values() if r['fwd_passes'] >= c.budget]
    step = b['step_seconds']
    if full and b.get('fwd_passes', 0) < c.budget:
      step = max(step, sum(full) / len(full))
    by_task[c.task] = by_task.get(c.task, 0) + step * c.max_steps + b['compile_seconds']
  totals = [sum(list(by_task.values())[: i + 1]) for i in range(len(by_task))]
  fit = [task for task, total in zip(by_task, totals) if total <= seconds]
  out.update(
    estimated_seconds_by_task=by_task,
    tasks_that_fit=fit,
    only='+'.join(fit or list(by_task)[:1]) if len(fit) < len(by_task) else '',
    note='serial: compile + max_steps x the bench step per run (a row of fewer passes '
    "than the budget: at least the full-budget rows' mean step; unbenched rungs: the "
    "benched rungs' mean); no evaluation",
  )
  return out


def main(argv):
  bench, spec, slots, seconds, path = argv
  out = plan(spec, bench_rows(bench), float(seconds), int(slots))
  print(json.dumps(out, indent=1))
  with open(path, 'w') as f:
    json.dump(out, f, indent=1)


if __name__ == '__main__':
  main(sys.argv[1:])
