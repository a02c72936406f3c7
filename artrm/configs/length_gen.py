"""Length generalisation: train at L = 10, evaluate at 10..50 (the paper's main run).

Paper scale, one rung and task:
  artrm train --config=artrm/configs/length_gen.py:model=trm,task=addition --workdir=runs/trm_add
Small CPU variant (minutes on a laptop):
  artrm train --config=artrm/configs/length_gen.py:model=trm,task=copy,runlocal --workdir=/tmp/trm
Any field can be overridden on the command line, e.g. `--config.max_steps=1000`.
"""

from artrm.configs import common


def get_config(arg: str | None = None):
  a = common.parse_arg(arg, model='gpt', task='addition', runlocal=False)
  c = common.base_config()
  c.model.name = a.model
  c.task = a.task
  return common.make_runlocal(c) if a.runlocal else c


def suite_config(arg: str | None, task: str = 'addition'):
  """(config, parsed arg) for a suite in experiments/: `runlocal` and `seeds=N` (default 3)."""
  a = common.parse_arg(arg, runlocal=False, seeds=3)
  c = get_config(f'task={task}' + (',runlocal' if a.runlocal else ''))
  c.num_seeds = a.seeds
  return c, a
