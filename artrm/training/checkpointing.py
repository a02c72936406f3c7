"""Orbax checkpoints of a run: periodic + latest, and the best by a metric.

Layout under the workdir:
  checkpoints/<step>/{state, config}          periodic; the newest is "latest"
  best/<step>/{state, config, metrics}        one, the best eval so far

The config travels with every checkpoint. Restoring into a config that trains
a different run (another model, task, optimizer or seed) is refused before
anything is read or written, so a wrong command cannot clobber a run.
"""

import dataclasses
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

# Config fields (sections or dotted keys) that may change between a run and its
# resumption (or its evaluation): they decide how long, how fast and how it is
# watched, not what is trained.
MUTABLE_FIELDS = ('max_steps', 'eval', 'log', 'checkpoint', 'model.remat')


class ConfigMismatchError(ValueError):
  pass


def _flatten(d: dict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = list(v) if isinstance(v, tuple) else v
  return out


def config_differences(saved: dict, current: dict, ignore=MUTABLE_FIELDS) -> list[str]:
  """'key: saved -> current' for every identity field that differs."""
  keep = lambda k: k not in ignore and k.split('.')[0] not in ignore
  a, b = _flatten(saved), _flatten(current)
  return [f'{k}: {a.get(k)!r} -> {b.get(k)!r}'
          for k in sorted(set(a) | set(b)) if keep(k) and a.get(k) != b.get(k)]


def check_compatible(saved: dict, current: dict, where: str, ignore=MUTABLE_FIELDS):
  diffs = config_differences(saved, current, ignore)
  if diffs:
    raise ConfigMismatchError(
        f'The checkpoint in {where} was made with another config:\n  ' + '\n  '.join(diffs) +
        '\nUse a fresh --workdir for a new run, or pass the original config to resume it. '
        'Nothing was changed on disk.')


@dataclasses.dataclass
class RunCheckpoints:
  """The two checkpoint managers of one workdir."""

  workdir: str
  max_to_keep: int | None = None

  def __post_init__(self):
    options = dict(create=True, enable_async_checkpointing=True)
    self.periodic = ocp.CheckpointManager(
        os.path.join(os.path.abspath(self.workdir), 'checkpoints'),
        options=ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep or None, **options),
        item_names=('state', 'config'))
    self.best = ocp.CheckpointManager(
        os.path.join(os.path.abspath(self.workdir), 'best'),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, **options),
        item_names=('state', 'config', 'metrics'))

  def manager(self, which: str) -> ocp.CheckpointManager:
    return self.best if which == 'best' else self.periodic

  def resolve_step(self, which: str | int) -> int | None:
    """'latest', 'best' or a step number -> a saved step (None if there is none)."""
    if which in ('latest', 'best'):
      return self.manager(which).latest_step()
    step = int(which)
    if step not in self.periodic.all_steps():
      raise FileNotFoundError(f'No checkpoint at step {step} in {self.workdir}; '
                              f'saved steps: {self.periodic.all_steps()}.')
    return step

  def saved_config(self, which: str | int = 'latest') -> dict | None:
    step = self.resolve_step(which)
    if step is None:
      return None
    return self.manager(which).restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))['config']

  def best_metrics(self) -> dict | None:
    step = self.best.latest_step()
    if step is None:
      return None
    return self.best.restore(step, args=ocp.args.Composite(metrics=ocp.args.JsonRestore()))['metrics']

  def save(self, step: int, state, config: dict, *, best_metrics: dict | None = None):
    """A periodic checkpoint, or (with `best_metrics`) the new best."""
    items = dict(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config))
    if best_metrics is None:
      self.periodic.save(step, args=ocp.args.Composite(**items))
    else:
      self.best.save(step, args=ocp.args.Composite(**items, metrics=ocp.args.JsonSave(best_metrics)),
                     force=True)

  def restore(self, which: str | int, abstract_state, config: dict, ignore=MUTABLE_FIELDS):
    """(step, state) from a checkpoint, after checking its config matches."""
    step = self.resolve_step(which)
    if step is None:
      raise FileNotFoundError(f'No {which} checkpoint in {self.workdir}.')
    check_compatible(self.saved_config(which), config, self.workdir, ignore)
    restored = self.manager(which).restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
    return step, restored['state']

  def wait(self):
    self.periodic.wait_until_finished()
    self.best.wait_until_finished()

  def close(self):
    self.periodic.close()
    self.best.close()


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) that tell Orbax how to restore `tree`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
