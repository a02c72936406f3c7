"""What a run's workdir holds: every file name, and readers that need no jax.

  config.json            the run's config (written at start)
  metrics.jsonl          one JSON record a line: kind 'setup', 'train', 'eval', 'resume',
                         'preempted'
  eval/                  one JSON per evaluation, and metrics.csv (tidy rows)
  final_eval.json        the last evaluation and its settings; marks a finished run
  inference_eval.json    re-evaluations with other numbers of inference steps
  checkpoints/<step>/    periodic Orbax checkpoints (the newest is 'latest')
  best/<step>/           the best checkpoint by the configured metric
  <step>.corrupt/        beside them: a checkpoint that failed to restore, kept
  lock                   who trains here: held (flock) by the one trainer of the workdir
  stdout.log             the trainer's output, when `artrm suite` ran it on this machine

Tooling (suites, results, report) reads runs through this module alone, so
gathering results or drawing figures imports neither jax nor the trainer.
"""

import contextlib
import fcntl
import json
import os
import socket
from typing import Any

from absl import logging

CONFIG = 'config.json'
METRICS = 'metrics.jsonl'
EVAL_DIR = 'eval'
EVAL_CSV = 'metrics.csv'
FINAL_EVAL = 'final_eval.json'
INFERENCE_EVAL = 'inference_eval.json'
CHECKPOINTS = 'checkpoints'
BEST = 'best'
CORRUPT = '.corrupt'  # the suffix of a damaged checkpoint's step directory
LOCK = 'lock'
STDOUT = 'stdout.log'


class WorkdirBusyError(RuntimeError):
  pass


class WriteError(OSError):
  """A file of the run could not be written (a full disk, a quota, a read-only mount)."""


def write_error(target: str, e: OSError) -> WriteError:
  """The one-line error that names what could not be written, and why."""
  return WriteError(f'Could not write {target}: {e.strerror or e}.')


def path(workdir: str, name: str) -> str:
  return os.path.join(workdir, name)


def read_config(workdir: str) -> dict:
  with open(path(workdir, CONFIG)) as f:
    return json.load(f)


@contextlib.contextmanager
def replacing(target: str, newline: str | None = None):
  """A text file that replaces `target` once written whole: a reader, a kill or a full
  disk never leaves half a file there, and a failed write raises WriteError."""
  tmp = f'{target}.tmp{os.getpid()}'
  try:
    with open(tmp, 'w', newline=newline) as f:
      yield f
    os.replace(tmp, target)
  except OSError as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise write_error(target, e) from e


@contextlib.contextmanager
def appending(target: str):
  """`target` opened to append; a failed write raises WriteError (a line cut short by it
  is dropped by `read_metrics`)."""
  try:
    with open(target, 'a') as f:
      yield f
  except OSError as e:
    raise write_error(target, e) from e


def write_json(workdir: str, name: str, obj: Any):
  with replacing(path(workdir, name)) as f:
    json.dump(obj, f, indent=1)


def checkpoint_steps(workdir: str, which: str = CHECKPOINTS) -> list[int]:
  """The steps of the checkpoints (CHECKPOINTS or BEST) on disk, finished or not, without Orbax."""
  p = path(workdir, which)
  return sorted(int(n) for n in os.listdir(p) if n.isdigit()) if os.path.isdir(p) else []


def read_metrics(workdir: str, kind: str | None = None) -> list[dict]:
  """The records of metrics.jsonl, optionally of one kind ('setup', 'train', 'eval', 'resume').

  A last line cut short by a crash is dropped with a warning.
  """
  p = path(workdir, METRICS)
  if not os.path.exists(p):
    return []
  with open(p) as f:
    lines = [line for line in f if line.strip()]
  records = [json.loads(line) for line in lines[:-1]]
  if lines:
    try:
      records.append(json.loads(lines[-1]))
    except json.JSONDecodeError:  # torn by a crash mid-write: the run re-logs that step
      logging.warning('%s: dropped its last line, cut short: %r', p, lines[-1][:80])
  return [r for r in records if kind is None or r['kind'] == kind]


def make_workdir(workdir: str):
  """`os.makedirs`, whose failure on a path through a file names that file."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except (FileExistsError, NotADirectoryError):
    file = next((p for p in reversed(_ancestors(workdir)) if os.path.isfile(p)), workdir)
    raise NotADirectoryError(
      f'--workdir={workdir}: {file} is a file, not a directory; choose a workdir that is one.'
    ) from None


def _ancestors(p: str) -> list[str]:
  """`p` and each of its parent paths, longest first."""
  p = os.path.abspath(p)
  return [p] + ([] if os.path.dirname(p) == p else _ancestors(os.path.dirname(p)))


@contextlib.contextmanager
def lock(workdir: str):
  """Holds the workdir's lock: one trainer per workdir.

  An OS lock (flock) on workdir/lock, released by the kernel when its process
  dies: a killed trainer leaves no stale lock, and the next one takes over.
  The file names the holder, for the message of whoever is refused.
  """
  make_workdir(workdir)
  fd = os.open(path(workdir, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = os.pread(fd, 256, 0).decode(errors='replace').strip() or 'another process'
    os.close(fd)
    raise WorkdirBusyError(
      f'{workdir} is being trained by {holder}; wait for it to end, or use another --workdir.'
    ) from None
  try:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'PID {os.getpid()} on host {socket.gethostname()}\n'.encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the lock


def _int_keys(by_seed: dict) -> dict[int, dict[int, dict]]:
  return {int(seed): {int(L): m for L, m in r.items()} for seed, r in by_seed.items()}


def write_final_eval(workdir: str, step: int, results: dict, settings: dict):
  write_json(workdir, FINAL_EVAL, dict(step=step, settings=settings, results=results))


def read_final_eval(workdir: str) -> dict | None:
  """{'step', 'settings', 'results': {seed: {length: metrics}}} of a finished run, else None.

  `settings` is what the numbers depend on besides the params (lengths,
  samples, decoding, ...); None in files written before it was recorded.
  """
  p = path(workdir, FINAL_EVAL)
  if not os.path.exists(p):
    return None
  with open(p) as f:
    raw = json.load(f)
  return dict(step=raw['step'], settings=raw.get('settings'), results=_int_keys(raw['results']))


def read_inference_eval(workdir: str) -> dict | None:
  """{'step', 'results': {steps: {seed: {length: metrics}}}}, else None."""
  p = path(workdir, INFERENCE_EVAL)
  if not os.path.exists(p):
    return None
  with open(p) as f:
    raw = json.load(f)
  return dict(
    step=raw['step'], results={int(n): _int_keys(by_seed) for n, by_seed in raw['results'].items()}
  )


def metric_rows(results: dict[int, dict], **base) -> list[dict]:
  """{length: metrics} as tidy rows `{**base, 'eval_length', 'metric', 'value'}`.

  A per-position list becomes one row per position, named `pos{i}`.
  """
  rows = []
  for L, metrics in results.items():
    for name, value in metrics.items():
      named = (
        [(f'pos{i}', v) for i, v in enumerate(value)]
        if isinstance(value, list)
        else [(name, value)]
      )
      rows += [{**base, 'eval_length': int(L), 'metric': n, 'value': float(v)} for n, v in named]
  return rows
