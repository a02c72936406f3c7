"""How much of a suite fits a time box, estimated from `artrm bench` step and compile times.

  python -m artrm.tools.time_box BENCH_DIR SUITE SLOTS SECONDS PLAN_JSON

Runs that share one GPU time-slice it: seven on one H200 trained no faster in all
than the bench's step times one run at a time (docs/performance.md, "On a GPU"),
so the estimate is serial, task by task in the suite's order. It counts no
evaluation; the grid measured there, evaluations included, still matched it. When
not every task fits, `only` names those that do (at least the first): the suite
argument of experiments/length_gen.py.
"""

import glob
import json
import os
import sys

from artrm.tools import suites


def bench_rows(folder: str) -> dict[str, dict]:
  """{rung: its training row} of every bf16 bench JSON in `folder`."""
  rows = {}
  for path in sorted(glob.glob(os.path.join(folder, '*bfloat16*.json'))):
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
  keys = ('step_seconds', 'compile_seconds')
  mean = {k: sum(b[k] for b in bench.values()) / len(bench) for k in keys}
  by_task = {}
  for run in runs:
    c = suites.run_config(spec, run)
    b = bench.get(c.model.name, mean)
    by_task[c.task] = (
      by_task.get(c.task, 0) + b['step_seconds'] * c.max_steps + b['compile_seconds']
    )
  totals = [sum(list(by_task.values())[: i + 1]) for i in range(len(by_task))]
  fit = [task for task, total in zip(by_task, totals) if total <= seconds]
  out.update(
    estimated_seconds_by_task=by_task,
    tasks_that_fit=fit,
    only='+'.join(fit or list(by_task)[:1]) if len(fit) < len(by_task) else '',
    note='serial: compile + max_steps x the bench step per run (unbenched rungs: the '
    "benched rungs' mean); no evaluation",
  )
  return out


def main(argv):
  folder, spec, slots, seconds, path = argv
  out = plan(spec, bench_rows(folder), float(seconds), int(slots))
  print(json.dumps(out, indent=1))
  with open(path, 'w') as f:
    json.dump(out, f, indent=1)


if __name__ == '__main__':
  main(sys.argv[1:])
