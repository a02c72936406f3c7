"""Where a call's time goes: an XLA profiler trace of a few calls, summarised.

Step times say how fast; the trace says why. It records every op XLA ran and
on which thread, so its summary says which parts of the model and which kinds
of op take the time, and how long each thread spent inside ops. (On CPU, work
that an op hands to XLA's thread pool runs unrecorded on another thread: thread
time is the time inside ops as dispatched, not a core's utilisation.) The trace
itself stays on disk for Perfetto or TensorBoard.
`artrm bench --profile_dir=DIR` writes and summarises one per rung.
"""

import collections
import glob
import gzip
import json
import os
import re
from typing import Any, Callable

import jax

_TRACE_FILE = 'perfetto_trace.json.gz'

# Parts of the model, by the first of these found in an op's `op_name` (the scopes
# of the model code; a fused op carries its root's): dropout before attention, whose
# dropouts it holds. Backward ops are named `transpose(...)`, remat's recompute included.
REGIONS = (
  ('dropout', 'Dropout'),
  ('data', 'sample_batch'),
  ('attention', '/attn/'),
  ('mlp', '/mlp/'),
  ('layer norm', '/ln'),
)
# An HLO instruction line: its name and its op_name metadata.
_HLO_OP_NAME = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = [^\n]*?op_name="([^"]*)"', re.M)


def trace(
  fn: Callable[[], Any], calls: int, logdir: str, top: int = 10, hlo_text: str | None = None
) -> tuple[dict, list[Any]]:
  """Runs `fn()` `calls` times, each synchronised, under the profiler; its `summarize`
  and the calls' outputs."""
  with jax.profiler.trace(logdir, create_perfetto_trace=True):
    outs = [jax.block_until_ready(fn()) for _ in range(calls)]
  return summarize(logdir, calls, top, hlo_text), outs


def op_kind(name: str) -> str:
  """'fusion.12' -> 'fusion': XLA numbers each instance of an op kind."""
  return re.sub(r'\.\d+$', '', name)


def _is_op(event: dict) -> bool:
  """An op XLA ran (it names its `hlo_op`), not Python frames, dispatch or the
  runtime's bookkeeping (thread pools, 'end:' markers)."""
  return event.get('ph') == 'X' and 'hlo_op' in event.get('args', {})


def op_regions(hlo_text: str) -> dict[str, str]:
  """{op name: region} of a compiled module (`compiled.as_text()`), by `REGIONS`;
  'other' holds the rest (embeddings, LM head, loss, optimizer, loop copies)."""
  out = {}
  for name, op_name in _HLO_OP_NAME.findall(hlo_text):
    region = next((r for r, key in REGIONS if key in op_name), 'other')
    out[name] = region + (' bwd' if 'transpose(' in op_name else '')
  return out


def _self_and_busy(events: list[dict]) -> tuple[list[float], float]:
  """Each op's self time (its duration less its nested ops', so a `while` is not
  counted on top of its body) and the busy time (the union) of one thread's ops, in us."""
  self_us, busy, stack = [0.0] * len(events), 0.0, []  # stack: [end, index] of enclosing ops
  for i in sorted(range(len(events)), key=lambda i: (events[i]['ts'], -events[i]['dur'])):
    e = events[i]
    while stack and stack[-1][0] <= e['ts']:
      stack.pop()
    if stack:
      self_us[stack[-1][1]] -= e['dur']
    else:
      busy += e['dur']
    self_us[i] += e['dur']
    stack.append([e['ts'] + e['dur'], i])
  return self_us, busy


def summarize(logdir: str, calls: int, top: int = 10, hlo_text: str | None = None) -> dict:
  """Per call: the span from the first op to the last, each thread's time inside ops,
  the `top` op kinds by (self) time and, given the traced program's compiled HLO, the
  time per model region (`op_regions`).

  Times are milliseconds per call. The newest trace under `logdir` is read.
  """
  paths = glob.glob(os.path.join(logdir, '**', _TRACE_FILE), recursive=True)
  if not paths:
    raise FileNotFoundError(
      f'No {_TRACE_FILE} under {logdir}; write one with '
      'jax.profiler.trace(logdir, create_perfetto_trace=True).'
    )
  with gzip.open(max(paths, key=os.path.getmtime)) as f:
    events = json.load(f)['traceEvents']
  by_thread = collections.defaultdict(list)  # (process, thread): GPU stream ids repeat
  for e in filter(_is_op, events):
    by_thread[e['pid'], e['tid']].append(e)
  if not by_thread:
    raise ValueError(f'The trace under {logdir} holds no XLA ops; did the traced calls run?')
  ops = [e for thread in by_thread.values() for e in thread]
  span_us = max(e['ts'] + e['dur'] for e in ops) - min(e['ts'] for e in ops)
  regions = op_regions(hlo_text) if hlo_text else {}
  kinds: dict[str, float] = collections.Counter()
  region_us: dict[str, float] = collections.Counter()
  busy_us = []
  for thread in by_thread.values():
    self_us, busy = _self_and_busy(thread)
    for e, us in zip(thread, self_us):
      kinds[op_kind(e['args']['hlo_op'])] += us
      region_us[regions.get(e['args']['hlo_op'], 'other')] += us
    busy_us.append(busy)
  per_call = lambda us: us / 1e3 / calls
  out = dict(
    trace_dir=logdir,
    calls=calls,
    span_ms=per_call(span_us),
    thread_busy_ms=sorted((per_call(b) for b in busy_us), reverse=True),
    op_ms={k: per_call(v) for k, v in kinds.most_common(top)},
    other_op_ms=per_call(sum(v for _, v in kinds.most_common()[top:])),
  )
  if regions:
    out['region_ms'] = {k: per_call(v) for k, v in sorted(region_us.items())}
  return out


def describe(summary: dict, top: int = 4) -> str:
  """One line: span, thread time in ops and the leading regions (or op kinds)."""
  busy = summary['thread_busy_ms']
  by = summary.get('region_ms') or summary['op_ms']
  ops = ', '.join(f'{k} {v:.1f}' for k, v in sorted(by.items(), key=lambda kv: -kv[1])[:top])
  return (
    f'{summary["span_ms"]:.1f} ms/call, {len(busy)} threads in ops {sum(busy):.0f} ms; '
    f'ms in {ops} ({summary["trace_dir"]})'
  )
