"""Preemption: SIGTERM or SIGINT end a run at a step boundary, with a checkpoint.

SLURM (`--signal`), a TPU VM's maintenance and Ctrl-C send one of them before a
job is killed. The first one asks the loop to stop after the step in flight: it
saves a checkpoint, records `{"kind": "preempted"}` and raises `Preempted`, which
`artrm train` turns into exit code EXIT_CODE, the launchers' "requeue me". A
second signal ends the process at once, as a kill would: the newest finished
checkpoint stays the one a re-run resumes from.

Processes of a multi-process run must stop at the same step, though a signal may
reach only one of them, or each at another step. They agree at the steps where the
loop logs, whose metrics sync them anyway: one small all-gather of "asked to stop?",
and all stop if any was. (JAX's own preemption service, which has SIGTERM until
then, agrees a second or more later from a background thread, and then waits for
any process that has already finished.)
"""

import contextlib
import os
import signal
import threading
from typing import Callable, Iterator

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure, run the command again


class Preempted(Exception):
  """The run stopped on a signal, its checkpoint saved: the same command resumes it."""

  def __init__(self, step: int, why: str):
    super().__init__(
      f'Stopped by {why} after step {step}, whose checkpoint is saved; re-run the same '
      f'command to resume (exit code {EXIT_CODE} asks a launcher to requeue the run).'
    )


def _exit_now(signum: int):
  """The second signal: the process ends by it, as if it had not been caught."""
  signal.signal(signum, signal.SIG_DFL)
  os.kill(os.getpid(), signum)


@contextlib.contextmanager
def stop_requests() -> Iterator[Callable[[bool], str]]:
  """Catches SIGTERM and SIGINT while open; yields `requested(logged)`, called after every
  step by every process (`logged`: the loop logged at it): what asked the run to stop
  there, '' while nothing has. Several processes stop at logged steps only.

  Off the main thread, where Python cannot take signals, nothing is caught."""
  processes = jax.process_count()
  received: list[int] = []
  name = lambda signum: signal.Signals(signum).name

  def on_signal(signum, frame):
    del frame
    if received:
      _exit_now(signum)
    received.append(signum)
    logging.warning(
      '%s: stopping after the step in flight, with a checkpoint; send it again to stop now.',
      name(signum),
    )

  def requested(logged: bool) -> str:
    if processes == 1:
      return name(received[0]) if received else ''
    if not logged:
      return ''
    by_process = multihost_utils.process_allgather(np.int32(received[0] if received else 0))
    return ', '.join(f'{name(s)} to process {i}' for i, s in enumerate(by_process) if s)

  main = threading.current_thread() is threading.main_thread()
  before = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT) if main}
  try:
    yield requested
  finally:
    for s, handler in before.items():
      signal.signal(s, handler if handler is not None else signal.SIG_DFL)
