"""Suites: a base config plus a sweep of overrides, one workdir per run.

A suite file (experiments/*.py) defines `get_config(arg)` and `get_sweep(arg)`;
the sweep is a list of flat override dicts (`{'model.name': 'trm', 'task':
'copy'}`). Seeds are not a sweep axis by default but `num_seeds` in the base
config: they train together in one vmapped program. The run's name is made
from its overrides, so re-launching a suite finds the same workdirs, skips
finished runs and resumes the others.
"""

import dataclasses
import importlib.util
import json
import os
import shlex
import sys
from typing import Any

import ml_collections

from artrm import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  overrides: dict[str, Any]
  workdir: str
  index: int  # its place in the suite's sweep (`artrm stack --runs` counts them)


def load_suite_module(path: str):
  spec = importlib.util.spec_from_file_location(f'artrm_suite_{abs(hash(path))}', path)
  if spec is None:
    raise FileNotFoundError(f'No suite file {path!r}; suites live in experiments/*.py.')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for fn in ('get_config', 'get_sweep'):
    if not hasattr(module, fn):
      raise ValueError(f'{path} is not a suite file: it has no {fn}(arg).')
  return module


def split_spec(spec: str) -> tuple[str, str]:
  """'experiments/x.py:runlocal' -> ('experiments/x.py', 'runlocal')."""
  path, _, arg = spec.partition(':')
  return path, arg


def run_name(overrides: dict[str, Any]) -> str:
  return ','.join(f'{k.split(".")[-1]}={v}' for k, v in overrides.items()) or 'base'


def pick_rows(rows: list, n: int) -> list:
  """A suite argument `rows=N`: the first N rows, the last -N where N < 0, all where 0."""
  return rows[n:] if n < 0 else rows[: n or None]


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]):
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise KeyError(f'Sweep key {key!r} is not a config field.')
    node[leaf] = value
  return config


def suite_runs(spec: str, root: str) -> list[Run]:
  path, arg = split_spec(spec)
  module = load_suite_module(path)
  runs = [
    Run(run_name(o), dict(o), os.path.join(root, run_name(o)), i)
    for i, o in enumerate(module.get_sweep(arg))
  ]
  names = [r.name for r in runs]
  if len(set(names)) != len(names):
    raise ValueError(f'{path}: two sweep points share a name; make the overrides distinct.')
  return runs


def run_config(spec: str, run: Run) -> ml_collections.ConfigDict:
  path, arg = split_spec(spec)
  return apply_overrides(load_suite_module(path).get_config(arg), run.overrides)


def is_finished(run: Run, config: ml_collections.ConfigDict) -> bool:
  final = workdir_lib.read_final_eval(run.workdir)
  return final is not None and final['step'] >= config.max_steps


def train_command(spec: str, run: Run, python: str | None = None) -> list[str]:
  """The `artrm train` command line of one run: what every launcher executes."""
  cmd = [
    python or sys.executable,
    '-m',
    'artrm',
    'train',
    f'--config={spec}',
    f'--workdir={run.workdir}',
    '--config.log.progress_bar=False',
  ]
  cmd += [f'--config.{k}={_flag_value(v)}' for k, v in run.overrides.items()]
  return cmd


def _flag_value(value) -> str:
  if isinstance(value, (tuple, list)):
    return '(' + ','.join(map(str, value)) + (',)' if len(value) == 1 else ')')
  return str(value)


def shell_line(cmd: list[str]) -> str:
  return ' '.join(shlex.quote(c) for c in cmd)


# How a launcher groups a suite's runs into stacks (`training.stacking`): `off`, one run per
# program; `layout`, runs of one rung and settings on tasks of one row layout (copy and
# reverse; addition), trained as they would be alone; `all`, every task, rows padded to the
# longest (`train_seq_len`: such runs resume only as stacks).
STACK_MODES = ('off', 'layout', 'all')


def stacks(spec: str, runs: list[Run], mode: str, max_size: int = 0) -> list[list[Run]]:
  """`runs` grouped into stacks of at most `max_size` (0: any size) runs that share every
  setting but task and seeds, and start from one checkpoint step."""
  if mode not in STACK_MODES:
    raise ValueError(f'stack={mode!r}: choose one of {list(STACK_MODES)}.')
  # Here, not at the top: the results store reads suites without importing jax.
  from artrm.data import same_layout
  from artrm.training import stacking

  groups: dict[str, list[Run]] = {}
  for run in runs:
    config = run_config(spec, run).to_dict()
    layout = same_layout(config['task']) if mode == 'layout' else ()
    for field in stacking.PER_RUN:
      config.pop(field)
    steps = workdir_lib.checkpoint_steps(run.workdir) if os.path.isdir(run.workdir) else []
    key = json.dumps([config, layout, max(steps, default=0)], sort_keys=True, default=str)
    groups.setdefault(key if mode != 'off' else run.name, []).append(run)
  size = max_size or len(runs)
  return [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]


def stack_command(spec: str, root: str, stack: list[Run], mode: str, python: str | None = None):
  """The command line of one stack: `artrm train` for a stack of one, else `artrm stack`."""
  if len(stack) == 1:
    return train_command(spec, stack[0], python)
  return [
    python or sys.executable,
    '-m',
    'artrm',
    'stack',
    f'--suite={spec}',
    f'--root={root}',
    f'--runs={",".join(str(r.index) for r in stack)}',
    f'--{"" if mode == "all" else "no"}pad',
  ]
