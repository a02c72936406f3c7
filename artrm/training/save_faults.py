"""What a failed Orbax read or save leaves behind, kept to artrm's one-line reports.

A failed write becomes a `workdir.WriteError` naming the file and the cause, and the
tracebacks and log records Orbax, TensorStore and asyncio add for it are dropped.
"""

import functools
import logging as std_logging
import os
import re
import sys

import orbax.checkpoint as ocp

from artrm import workdir as workdir_lib


def is_orphaned_read(exc: BaseException | None) -> bool:
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


def ignore_orphaned_reads():
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
      if not is_orphaned_read(exc_of(*args)):
        report(*args)

    hook.ignores_orphaned_reads = True
    return hook

  sys.excepthook = quiet(sys.excepthook, lambda kind, value, tb: value)
  sys.unraisablehook = quiet(sys.unraisablehook, lambda unraisable: unraisable.exc_value)


def write_failure(e: BaseException | None) -> tuple[str | None, str] | None:
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


def reports_write_failures(method):
  """A RunCheckpoints method whose failed write (its own, or a save's in the background)
  removes the unfinished saves and raises WriteError naming the file and the cause: the
  newest finished checkpoint stays the latest."""

  @functools.wraps(method)
  def wrapped(self, *args, **kwargs):
    try:
      return method(self, *args, **kwargs)
    except Exception as e:
      failure = write_failure(e)
      if failure is None:
        raise
      self._remove_unfinished()
      where, cause = failure
      what = f'the checkpoint {where}' if where else f'a checkpoint in {self.workdir}'
      raise workdir_lib.WriteError(f'Could not save {what}: {cause}.') from e

  return wrapped


_ORBAX_DIR = os.path.dirname(ocp.__file__)


def drop_reported_errors(record: std_logging.LogRecord) -> bool:
  """Keeps the terminal to artrm's own one-line reports. Orbax logs an error (often with a
  traceback) for what it then raises, which artrm reports, and for an unreadable
  `_CHECKPOINT_METADATA`, its bookkeeping of a step, which a restore does not need: the
  state is checked against its fingerprint. asyncio then logs each write of a failed save
  that was still in flight."""
  orbax = record.levelno >= std_logging.ERROR and record.pathname.startswith(_ORBAX_DIR)
  return not (orbax or (record.exc_info and write_failure(record.exc_info[1])))
