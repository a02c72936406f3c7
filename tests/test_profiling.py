"""Profiler trace summaries: self time, busy time and span on a trace written by hand."""

import gzip
import json

import pytest

from artrm.bench import profiling


def _write_trace(logdir, events):
  run = logdir / 'plugins' / 'profile' / 'run'
  run.mkdir(parents=True)
  with gzip.open(run / 'perfetto_trace.json.gz', 'wt') as f:
    json.dump({'traceEvents': events}, f)


def _op(tid, name, ts, dur, pid=1):
  return dict(ph='X', pid=pid, tid=tid, name=name, ts=ts, dur=dur, args=dict(hlo_op=name))


def _not_op(tid, name, ts, dur):
  return dict(ph='X', pid=1, tid=tid, name=name, ts=ts, dur=dur, args={})


def test_summarize_counts_self_time_once(tmp_path):
  # Thread 1 runs a while loop around two fusions, one holding a dot; thread 2 (in
  # another process, same thread id) a copy. Python frames, dispatch and runtime
  # bookkeeping name no HLO op: not ops.
  _write_trace(
    tmp_path,
    [
      dict(ph='M', pid=1, tid=1, name='thread_name', args=dict(name='worker')),
      _not_op(9, '$api.py:1 block_until_ready', 0, 100),
      _not_op(9, 'PjitFunction(step)', 0, 20),
      _not_op(1, 'ThunkExecutor::Execute', 0, 12),
      _not_op(1, 'end: while.1', 10, 0),
      _op(1, 'while.1', 0, 10),
      _op(1, 'fusion.1', 1, 3),
      _op(1, 'fusion.2', 5, 4),
      _op(1, 'dot.3', 6, 1),
      _op(1, 'copy.4', 2, 6, pid=2),
    ],
  )
  s = profiling.summarize(str(tmp_path), calls=2, top=3)
  us = 1e-3 / 2  # microseconds over two calls, in ms per call
  assert s['span_ms'] == pytest.approx(10 * us)
  assert s['thread_busy_ms'] == pytest.approx([10 * us, 6 * us])
  # while: 10 less its fusions' 7; fusion: 3 + (4 less its dot's 1).
  assert s['op_ms'] == pytest.approx({'fusion': 6 * us, 'copy': 6 * us, 'while': 3 * us})
  assert s['other_op_ms'] == pytest.approx(1 * us)  # the dot, past the top 3
  assert 'region_ms' not in s and 'ms/call' in profiling.describe(s)

  # With the compiled HLO, the same self times by model region, from op_name scopes.
  hlo = """
  %fusion.1 = f32[2]{0} fusion(f32[2]{0} %p), kind=kLoop, metadata={op_name="jit(f)/jvp(LM)/blocks/block/attn/Dropout_0/mul"}
  ROOT %fusion.2 = f32[2]{0} fusion(%a), metadata={op_name="transpose(jvp(LM))/blocks/block/mlp/dot_general" source_file="x.py"}
  %while.1 = (s32[]) while(%t), body=%body, metadata={op_name="jit(f)/while"}
"""
  assert profiling.op_regions(hlo) == {
    'fusion.1': 'dropout',
    'fusion.2': 'mlp bwd',
    'while.1': 'other',
  }
  s = profiling.summarize(str(tmp_path), calls=2, hlo_text=hlo)
  # fusion.1 3, fusion.2 3 (less the dot), the while 3 + the dot 1 + the copy 6.
  assert s['region_ms'] == pytest.approx({'dropout': 3 * us, 'mlp bwd': 3 * us, 'other': 10 * us})
  assert profiling.describe(s).split('; ms in ')[1].startswith('other')


def test_summarize_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='create_perfetto_trace'):
    profiling.summarize(str(tmp_path), calls=1)
  _write_trace(tmp_path, [_not_op(9, '$api.py:1 f', 0, 5)])
  with pytest.raises(ValueError, match='no XLA ops'):
    profiling.summarize(str(tmp_path), calls=1)
