"""Metrics out of a run: JSONL in the workdir always, TensorBoard and W&B when asked.

The JSONL file is the record the results store reads; the others are views.
"""

import json
import math
import os
import time
from typing import Any, Mapping

import jax
import numpy as np

from artrm import workdir as workdir_lib


def _jsonable(value):
  value = value.item() if hasattr(value, 'item') else value
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN / Inf
  return value


class MetricWriter:
  """Appends `{'step', 'kind', **scalars}` lines to workdir/metrics.jsonl."""

  def __init__(
    self,
    workdir: str,
    *,
    tensorboard: bool = False,
    wandb_project: str = '',
    config: Mapping[str, Any] | None = None,
    enabled: bool = True,
  ):
    self.enabled = enabled  # only process 0 writes in a multi-host run
    self.path = workdir_lib.path(workdir, workdir_lib.METRICS)
    self._tb = self._wandb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter
      except ImportError as e:
        raise ImportError(
          'log.tensorboard=True needs tensorboardX: pip install -e ".[tensorboard]"'
        ) from e
      self._tb = SummaryWriter(os.path.join(workdir, 'tb'))
    if wandb_project:
      try:
        import wandb
      except ImportError as e:
        raise ImportError('log.wandb_project needs wandb: pip install wandb') from e
      self._wandb = wandb.init(
        project=wandb_project,
        dir=workdir,
        config=dict(config or {}),
        name=os.path.basename(os.path.abspath(workdir)),
        resume='allow',
      )

  def truncate_after(self, step: int):
    """Drops records past `step` (and a line torn by a crash): a run that starts at `step`
    re-logs the steps after it. Rewritten atomically, so a kill loses no record."""
    if not (self.enabled and os.path.exists(self.path)):
      return
    kept = [r for r in workdir_lib.read_metrics(os.path.dirname(self.path)) if r['step'] <= step]
    with workdir_lib.replacing(self.path) as f:
      f.writelines(json.dumps(r) + '\n' for r in kept)

  def write(self, step: int, kind: str, scalars: Mapping[str, Any]):
    if not self.enabled:
      return
    record = {'step': int(step), 'kind': kind, **{k: _jsonable(v) for k, v in scalars.items()}}
    with workdir_lib.appending(self.path) as f:
      f.write(json.dumps(record) + '\n')
    numeric = {
      k: v
      for k, v in record.items()
      if k not in ('step', 'kind') and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    if self._tb is not None:
      for k, v in numeric.items():
        self._tb.add_scalar(f'{kind}/{k}', v, step)
    if self._wandb is not None:
      self._wandb.log({f'{kind}/{k}': v for k, v in numeric.items()}, step=int(step))

  def close(self):
    if self._tb is not None:
      self._tb.close()
    if self._wandb is not None:
      self._wandb.finish()


class MetricWindow:
  """Step metrics kept on device until a flush; one host sync per log period."""

  def __init__(self, tokens_per_step: int):
    self.tokens_per_step = tokens_per_step
    self.pending: list[dict] = []
    self.start = time.perf_counter()

  def add(self, metrics: dict):
    self.pending.append(metrics)

  def flush(self, step: int) -> list[dict[str, float]]:
    """Per seed, the window's mean metrics and throughput (all seeds' tokens)."""
    if not self.pending:
      return []
    host = jax.device_get(self.pending)  # metrics [S] per step
    n, seconds = len(host), time.perf_counter() - self.start
    self.pending, self.start = [], time.perf_counter()
    bad = [i for i, m in enumerate(host) if not np.all(m['finite'])]
    if bad:
      m = host[bad[0]]
      what = (
        'loss or gradient'
        if not np.all(np.isfinite(m['loss']) & np.isfinite(m['grad_norm']))
        else 'params or optimizer state after the update'
      )
      raise FloatingPointError(
        f'Non-finite {what} at step {step - n + 1 + bad[0]} '
        f'(loss={m["loss"].tolist()}); the update of the non-finite supervision pass was not '
        'kept.'
      )
    means = {k: np.mean([m[k] for m in host], axis=0) for k in host[0] if k != 'finite'}
    n_seeds = len(means['loss'])
    speed = dict(
      steps_per_sec=n / seconds, tokens_per_sec=n * n_seeds * self.tokens_per_step / seconds
    )
    return [{**{k: float(v[i]) for k, v in means.items()}, **speed} for i in range(n_seeds)]
