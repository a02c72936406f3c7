"""Orbax checkpoints of a run: periodic + latest, and the best by a metric.

Layout under the workdir (names: `artrm.workdir`):
  checkpoints/<step>/{state, config, fingerprint}          periodic; the newest is "latest"
  best/<step>/{state, config, fingerprint, metrics}        one, the best eval so far
  checkpoints/<step>.corrupt/                              one that failed to restore, kept

The config travels with every checkpoint. Restoring into a config that trains
a different run (another model, task, optimizer or seed) is refused before
anything is read or written, so a wrong command cannot clobber a run.

The fingerprint is a digest of each array of the state as saved; a restore
recomputes it, so flipped bits are caught as surely as a missing file. A
checkpoint that fails to read or to verify is skipped with a warning, and the
newest good one is used.
"""

import contextlib
import dataclasses
import glob
import hashlib
import logging as std_logging
import os
import shutil
import time
from typing import Any, Callable

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from artrm import workdir as workdir_lib
from artrm.training import save_faults

# Config fields (sections or dotted keys) that may change between a run and its
# resumption (or its evaluation): they decide how long, how fast and how it is
# watched, not what is trained.
MUTABLE_FIELDS = ('max_steps', 'eval', 'log', 'checkpoint', 'model.remat')
# Fields that may also change when a run resumes, on purpose: the remedies for
# a diverging run. The trainer logs each change at the step it resumes from.
RESUME_CHANGES = ('optimizer.learning_rate', 'optimizer.grad_clip_norm')


class ConfigMismatchError(ValueError):
  pass


class CheckpointError(RuntimeError):
  """No intact checkpoint to restore."""


def _flatten(d: dict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = list(v) if isinstance(v, tuple) else v
  return out


def changed_fields(
  saved: dict, current: dict, ignore=MUTABLE_FIELDS, defaults: dict | None = None
) -> dict[str, tuple]:
  """{key: (saved, current)} for every field outside `ignore` that differs.

  A field the saved config lacks (added to the configs after the run was saved) held its
  value in `defaults` there, so a run resumed with it set otherwise is refused.
  """
  keep = lambda k: k not in ignore and k.split('.')[0] not in ignore
  a, b = {**_flatten(defaults or {}), **_flatten(saved)}, _flatten(current)
  return {
    k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if keep(k) and a.get(k) != b.get(k)
  }


def config_differences(
  saved: dict, current: dict, ignore=MUTABLE_FIELDS, defaults: dict | None = None
) -> list[str]:
  """'key: saved -> current' for every identity field that differs (`changed_fields`)."""
  changed = changed_fields(saved, current, ignore, defaults)
  return [f'{k}: {a!r} -> {b!r}' for k, (a, b) in changed.items()]


def fingerprint(tree) -> dict[str, str]:
  """{leaf path: digest of its bytes}: what a restore of `tree` must reproduce.

  The state is replicated, so each process reads its first local copy.
  """

  def digest(x):
    host = np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x)
    return hashlib.sha256(np.ascontiguousarray(host).tobytes()).hexdigest()[:16]

  return {jax.tree_util.keystr(k): digest(x) for k, x in jax.tree_util.tree_leaves_with_path(tree)}


def _first_line(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0][:160] if text else ""}'


def check_compatible(
  saved: dict, current: dict, where: str, ignore=MUTABLE_FIELDS, defaults: dict | None = None
):
  diffs = config_differences(saved, current, ignore, defaults)
  if diffs:
    raise ConfigMismatchError(
      f'The checkpoint in {where} was made with another config:\n  '
      + '\n  '.join(diffs)
      + '\nUse a fresh --workdir for a new run, or pass the original config to resume it. '
      'Nothing was changed on disk.'
    )


@dataclasses.dataclass
class RunCheckpoints:
  """The two checkpoint managers of one workdir."""

  workdir: str
  max_to_keep: int | None = None
  create: bool = True  # False: a reader, who makes no directory

  def __post_init__(self):
    save_faults.ignore_orphaned_reads()
    for logger in (logging.get_absl_logger(), std_logging.getLogger('asyncio')):
      if save_faults.drop_reported_errors not in logger.filters:
        logger.addFilter(save_faults.drop_reported_errors)
    # The trainer (who creates) removes saves a kill or a full disk left unfinished.
    options = dict(
      create=self.create, enable_async_checkpointing=True, cleanup_tmp_directories=self.create
    )
    self.periodic = ocp.CheckpointManager(
      workdir_lib.path(os.path.abspath(self.workdir), workdir_lib.CHECKPOINTS),
      options=ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep or None, **options),
      item_names=('state', 'config', 'fingerprint'),
    )
    self.best = ocp.CheckpointManager(
      workdir_lib.path(os.path.abspath(self.workdir), workdir_lib.BEST),
      options=ocp.CheckpointManagerOptions(max_to_keep=1, **options),
      item_names=('state', 'config', 'fingerprint', 'metrics'),
    )

  def manager(self, which: str) -> ocp.CheckpointManager:
    return self.best if which == 'best' else self.periodic

  def resolve_step(self, which: str | int) -> int | None:
    """'latest', 'best' or a step number -> a saved step (None if there is none)."""
    if which in ('latest', 'best'):
      return self.manager(which).latest_step()
    step = parse_which(which)
    if step not in self.periodic.all_steps():
      raise FileNotFoundError(
        f'No checkpoint at step {step} in {self.workdir}; saved steps: {self.periodic.all_steps()}.'
      )
    return step

  def best_metrics(self, move_aside: bool = False) -> dict | None:
    """The best checkpoint's metrics; None (with a warning) if there is none or it is damaged."""
    step = self.best.latest_step()
    if step is None:
      return None
    try:
      return self._read('best', step, metrics=ocp.args.JsonRestore())['metrics']
    except Exception as e:  # pylint: disable=broad-except   (any damage reads as an error)
      self._skip('best', step, _first_line(e), move_aside)
      return None

  @save_faults.reports_write_failures
  def save(self, step: int, state, config: dict, *, best_metrics: dict | None = None):
    """A periodic checkpoint, or (with `best_metrics`) the new best."""
    items = dict(
      state=ocp.args.StandardSave(state),
      config=ocp.args.JsonSave(config),
      fingerprint=ocp.args.JsonSave(fingerprint(state)),
    )
    if best_metrics is None:
      self.periodic.save(step, args=ocp.args.Composite(**items))
    else:
      # A resumed run replays the steps after its last periodic checkpoint. A best saved at
      # one of them before the kill gives way to the replay's (equal on CPU; on a GPU, whose
      # reductions are not bitwise repeatable, it can evaluate higher).
      if step in self.best.all_steps():
        self.best.delete(step)
      self.best.save(
        step, args=ocp.args.Composite(**items, metrics=ocp.args.JsonSave(best_metrics)), force=True
      )

  def restore(
    self,
    which: str | int,
    abstract_for: Callable[[dict], Any],
    config: dict | None,
    ignore=MUTABLE_FIELDS,
    move_aside: bool = False,
    defaults: dict | None = None,
  ) -> tuple[int, Any, dict]:
    """(step, state, its saved config) of checkpoint `which`, after checking that config
    matches `config` (None: any). 'latest' falls back past damaged checkpoints to the newest
    good one; `move_aside` (the trainer, who holds the workdir) renames the damaged ones.

    `abstract_for(saved config)` gives the abstract state to restore into; `defaults` are the
    values of fields a saved config lacks (`changed_fields`).
    """
    first = self.resolve_step(which)
    if first is None:
      raise FileNotFoundError(f'No {which} checkpoint in {self.workdir}.')
    steps = (
      [s for s in sorted(self.periodic.all_steps(), reverse=True) if s <= first]
      if which == 'latest'
      else [first]
    )
    damaged = []
    for step in steps:
      try:
        saved = self._read(which, step, config=ocp.args.JsonRestore())['config']
      except Exception as e:  # pylint: disable=broad-except
        damaged.append((step, f'config unreadable ({_first_line(e)})'))
        continue
      if config is not None:
        check_compatible(saved, config, self.workdir, ignore, defaults)
      why, state = self._read_state(which, step, abstract_for(saved))
      if why:
        damaged.append((step, why))
        continue
      for bad, reason in damaged:
        self._skip(which, bad, reason, move_aside)
      return step, state, saved
    listed = '; '.join(f'step {s}: {why}' for s, why in damaged)
    what = f'{which} checkpoint' if which in ('latest', 'best') else f'checkpoint at step {which}'
    raise CheckpointError(
      f'No intact {what} in {self.workdir} ({listed}). Nothing was changed; '
      'move the damaged step directories aside to start over there, or use a fresh --workdir.'
    )

  def _read_state(self, which: str, step: int, abstract_state) -> tuple[str, Any]:
    """('', state) if the state reads and matches its fingerprint, else (why not, None)."""
    has_fingerprint = os.path.isdir(self._step_dir(which, step, 'fingerprint'))
    items = dict(state=ocp.args.StandardRestore(abstract_state))
    if has_fingerprint:  # absent from checkpoints saved before it was recorded
      items['fingerprint'] = ocp.args.JsonRestore()
    try:
      restored = self._read(which, step, **items)
    except Exception as e:  # pylint: disable=broad-except
      return f'state unreadable ({_first_line(e)})', None
    if has_fingerprint:
      now, saved = fingerprint(restored['state']), restored['fingerprint']
      changed = [k for k in saved if now.get(k) != saved[k]] + sorted(set(now) - set(saved))
      if changed:
        return f'{len(changed)} array(s) differ from the saved fingerprint, e.g. {changed[0]}', None
    return '', restored['state']

  def _read(self, which: str, step: int, **items) -> dict:
    return self.manager(which).restore(step, args=ocp.args.Composite(**items))

  def _step_dir(self, which: str, step: int, *names: str) -> str:
    return os.path.join(os.fspath(self.manager(which).directory), str(step), *names)

  def _skip(self, which: str, step: int, why: str, move_aside: bool):
    """Warns of a damaged checkpoint; moves it aside (`<step>.corrupt`), never deletes it."""
    where = self._step_dir(which, step)
    if move_aside:
      target = next(
        aside
        for i in range(1000)
        if not os.path.exists(aside := f'{where}{workdir_lib.CORRUPT}{i or ""}')
      )
      if jax.process_index() == 0:  # the workdir is shared by a multi-host run's processes
        os.rename(where, target)
      self.manager(which).reload()
      where = f'{where} (moved to {os.path.basename(target)})'
    logging.warning('Skipped damaged checkpoint %s: %s', where, why)

  @save_faults.reports_write_failures
  def wait(self):
    self.periodic.wait_until_finished()
    self.best.wait_until_finished()

  def _remove_unfinished(self):
    """Deletes the saves that did not finish (Orbax's `<step>.orbax-checkpoint-tmp`
    directories): they hold space and no checkpoint. The writes of a failed save that were
    still in flight may create its directories again for a moment: deleted until none has
    come back for 0.2 s."""
    managers = (self.periodic, self.best)
    for manager in managers:
      with contextlib.suppress(Exception):  # its error is the one being reported
        manager.wait_until_finished()
    if jax.process_index() != 0:
      return
    quiet = 0
    for _ in range(50):
      unfinished = [
        d for m in managers for d in glob.glob(f'{m.directory}/*.orbax-checkpoint-tmp*')
      ]
      for d in unfinished:
        shutil.rmtree(d, ignore_errors=True)
      quiet = 0 if unfinished else quiet + 1
      if quiet == 2:
        return
      time.sleep(0.1)

  def close(self):
    self.periodic.close()
    self.best.close()


def parse_which(which: str | int) -> str | int:
  """'latest', 'best' or a step number (an int or its digits); anything else is an error."""
  if which in ('latest', 'best'):
    return which
  if isinstance(which, int) or (isinstance(which, str) and which.isdigit()):
    return int(which)
  raise ValueError(f"checkpoint must be 'latest', 'best' or a step number, got {which!r}.")
