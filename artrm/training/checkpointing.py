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
import functools
import glob
import hashlib
import logging as std_logging
import os
import re
import shutil
import sys
import time
from typing import Any, Callable

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from artrm import workdir as workdir_lib

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


def changed_fields(saved: dict, current: dict, ignore=MUTABLE_FIELDS) -> dict[str, tuple]:
  """{key: (saved, current)} for every field outside `ignore` that differs."""
  keep = lambda k: k not in ignore and k.split('.')[0] not in ignore
  # A field the saved config lacks (added to the configs after the run was saved) reads as
  # the current config's value: the field did not exist, so it cannot have changed.
  b = _flatten(current)
  a = {**b, **_flatten(saved)}
  return {
    k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if keep(k) and a.get(k) != b.get(k)
  }


def config_differences(saved: dict, current: dict, ignore=MUTABLE_FIELDS) -> list[str]:
  """'key: saved -> current' for every identity field that differs."""
  return [f'{k}: {a!r} -> {b!r}' for k, (a, b) in changed_fields(saved, current, ignore).items()]


def fingerprint(tree) -> dict[str, str]:
  """{leaf path: digest of its bytes}: what a restore of `tree` must reproduce.

  The state is replicated, so each process reads its first local copy.
  """

  def digest(x):
    host = np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x)
    return hashlib.sha256(np.ascontiguousarray(host).tobytes()).hexdigest()[:16]

  return {jax.tree_util.keystr(k): digest(x) for k, x in jax.tree_util.tree_leaves_with_path(tree)}


def _is_orphaned_read(exc: BaseException | None) -> bool:
  """A TensorStore read or write that finished after a failed Orbax read or save had closed
  its event loop."""
  tb = exc and exc.__traceback__
  while tb and tb.tb_next:
    tb = tb.tb_next
  return (
    isinstance(exc, RuntimeError)
    and str(exc) == 'Event loop is closed'
    and tb is not None
    and tb.tb_frame.f_code.co_filename.endswith(os.path.join('asyncio', 'base_events.py'))
  )


def _ignore_orphaned_reads():
  """Keeps the terminal free of what a failed read of a damaged checkpoint, or a failed save,
  leaves behind.

  The reads (or writes) still in flight call back into Orbax's closed event loop, and
  Python prints a traceback for each (from TensorStore's threads, or as an
  ignored exception). Those alone are dropped; every other report stands.
  """
  if getattr(sys.excepthook, 'ignores_orphaned_reads', False):
    return

  def quiet(report, exc_of):
    def hook(*args):
      if not _is_orphaned_read(exc_of(*args)):
        report(*args)

    hook.ignores_orphaned_reads = True
    return hook

  sys.excepthook = quiet(sys.excepthook, lambda kind, value, tb: value)
  sys.unraisablehook = quiet(sys.unraisablehook, lambda unraisable: unraisable.exc_value)


def _write_failure(e: BaseException | None) -> tuple[str | None, str] | None:
  """(the checkpoint's step directory or None, the cause) if `e` is a failed write (an
  OSError, or TensorStore's report of one as Orbax raises it), else None."""
  if isinstance(e, OSError):  # its filename may be relative to a directory's descriptor
    file = e.filename if os.path.isabs(os.fsdecode(e.filename or '')) else None
    cause = e.strerror or str(e)
  elif code := re.search(r"os_error_code='(\d+)'", str(e)):
    file, cause = next(iter(re.findall(r'"(/[^"]+)"', str(e))), None), os.strerror(int(code[1]))
  else:
    return None
  step_dir = re.match(r'(.*/\d+)\.orbax-checkpoint-tmp', file or '')
  return (step_dir[1] if step_dir else file), cause


def _reports_write_failures(method):
  """A RunCheckpoints method whose failed write (its own, or a save's in the background)
  removes the unfinished saves and raises WriteError naming the file and the cause: the
  newest finished checkpoint stays the latest."""

  @functools.wraps(method)
  def wrapped(self, *args, **kwargs):
    try:
      return method(self, *args, **kwargs)
    except Exception as e:
      failure = _write_failure(e)
      if failure is None:
        raise
      self._remove_unfinished()
      where, cause = failure
      what = f'the checkpoint {where}' if where else f'a checkpoint in {self.workdir}'
      raise workdir_lib.WriteError(f'Could not save {what}: {cause}.') from e

  return wrapped


_ORBAX_DIR = os.path.dirname(ocp.__file__)


def _drop_reported_errors(record: std_logging.LogRecord) -> bool:
  """Keeps the terminal to artrm's own one-line reports. Orbax logs an error (often with a
  traceback) for what it then raises, which artrm reports, and for an unreadable
  `_CHECKPOINT_METADATA`, its bookkeeping of a step, which a restore does not need: the
  state is checked against its fingerprint. asyncio then logs each write of a failed save
  that was still in flight."""
  orbax = record.levelno >= std_logging.ERROR and record.pathname.startswith(_ORBAX_DIR)
  return not (orbax or (record.exc_info and _write_failure(record.exc_info[1])))


def _first_line(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0][:160] if text else ""}'


def check_compatible(saved: dict, current: dict, where: str, ignore=MUTABLE_FIELDS):
  diffs = config_differences(saved, current, ignore)
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
    _ignore_orphaned_reads()
    for logger in (logging.get_absl_logger(), std_logging.getLogger('asyncio')):
      if _drop_reported_errors not in logger.filters:
        logger.addFilter(_drop_reported_errors)
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

  @_reports_write_failures
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
  ) -> tuple[int, Any, dict]:
    """(step, state, its saved config) of checkpoint `which`, after checking that config
    matches `config` (None: any). 'latest' falls back past damaged checkpoints to the newest
    good one; `move_aside` (the trainer, who holds the workdir) renames the damaged ones.

    `abstract_for(saved config)` gives the abstract state to restore into.
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
        check_compatible(saved, config, self.workdir, ignore)
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

  @_reports_write_failures
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
