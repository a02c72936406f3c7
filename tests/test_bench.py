"""The benchmark harness: a micro run end to end, and the FLOP count by hand."""

import importlib.util
import json
import math
import os
import sys

import pytest

from artrm.bench import flops, formatting, profiling, setups, timing
from artrm.models import ModelConfig
from artrm.training import builders

MICRO = setups.Setup(
  'micro',
  n_embd=16,
  n_head=2,
  budget=4,
  batch_size=4,
  block_size=7,
  task='copy',
  train_length=3,
  eval_lengths=(3,),
  eval_batch=4,
)


def _numbers(tree):
  if isinstance(tree, dict):
    return [x for v in tree.values() for x in _numbers(v)]
  if isinstance(tree, list):
    return [x for v in tree for x in _numbers(v)]
  return [tree] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


def test_micro_run_writes_json(tmp_path):
  # Two cheap rungs: compiles are most of the cost.
  result = timing.run_benchmark(
    MICRO, rungs=('gpt', 'gpt_level1'), steps=2, warmup=1, eval_repeats=1, peak=1e12
  )
  path = formatting.write_results(result, str(tmp_path / 'micro.json'))
  with open(path) as f:
    saved = json.load(f)
  assert {'device_kind', 'platform', 'jax', 'cpu_count'} <= set(saved['device'])
  assert saved['setup']['name'] == 'micro' and saved['settings']['steps'] == 2
  assert list(saved['rungs']) == ['gpt', 'gpt_level1']
  for row in saved['rungs'].values():
    t = row['train']
    assert t['seq_len'] == 7 and t['tokens_per_step'] == 4 * 7 and len(t['step_seconds_all']) == 2
    assert t['fwd_passes'] == t['bwd_passes'] == 4 and t['flops_per_step'] > 0
    assert 0 < t['mfu'] and t['step_program_bytes'] > 0 and row['peak_memory_bytes'] > 0
    assert row['eval']['3']['generate']['sequences_per_sec'] > 0
    assert row['eval']['3']['prompt_forward_seconds'] > 0
    assert row['eval']['3']['generate_cached']['matches_generate'] is True
    numbers = _numbers(row)
    assert numbers and all(math.isfinite(x) and x >= 0 for x in numbers)
  assert '| gpt_level1 ' in formatting.markdown(result)
  assert formatting.default_path(result).startswith('results/benchmarks/')


def test_data_parallel_step():
  """--devices=2 shards the batch over the two fake CPU devices; MFU counts both peaks."""
  one, two = (
    timing.run_benchmark(
      MICRO, rungs=('gpt',), steps=1, warmup=0, eval_repeats=1, peak=1e12, devices=n
    )
    for n in (1, 2)
  )
  assert two['settings']['devices'] == 2
  t1, t2 = one['rungs']['gpt']['train'], two['rungs']['gpt']['train']
  assert t2['flops_per_step'] == t1['flops_per_step']
  assert t2['mfu'] == pytest.approx(t2['flops_per_sec'] / 2e12)
  # Same batch, same dropout masks: the loss does not depend on the split.
  assert t2['loss'] == pytest.approx(t1['loss'], rel=1e-5)


def test_profile_dir(tmp_path):
  """--profile_dir traces the training step and cached decoding of each rung and
  summarises what it ran."""
  result = timing.run_benchmark(
    MICRO, rungs=('gpt',), steps=1, warmup=0, eval_repeats=1, profile_dir=str(tmp_path)
  )
  row = result['rungs']['gpt']
  for profile, where in (
    (row['train']['profile'], 'gpt/train'),
    (row['eval'][3]['generate_cached']['profile'], 'gpt/decode/L3'),
  ):
    assert profile['trace_dir'] == str(tmp_path / where)
    assert profile['calls'] == timing.PROFILED_CALLS
    assert list(tmp_path.glob(f'{where}/**/perfetto_trace.json.gz'))
    assert profile['span_ms'] > 0 and profile['op_ms']
    # Only XLA's op threads, never the Python thread that dispatched the calls.
    assert 1 <= len(profile['thread_busy_ms']) <= os.cpu_count() + 2
  # Training is traced with its HLO: its ops fall in the model's regions, both passes.
  train = row['train']['profile']
  assert train['fwd_passes'] == 4
  regions = {r for r, _ in profiling.REGIONS} | {'other'}
  assert set(train['region_ms']) <= regions | {f'{r} bwd' for r in regions}
  assert {'attention', 'attention bwd', 'mlp', 'mlp bwd', 'layer norm', 'data'} <= set(
    train['region_ms']
  )


def test_flops_by_hand():
  """trm, H = 2, L = 2, one step: 6 passes forward, the last cycle's 3 backward."""
  mc = ModelConfig(name='trm', n_embd=4, n_head=2, n_layer=1, n_outer_loops=2, n_inner_loops=2)
  B, T, C, V = 2, 3, 4, 14
  per_pass = 2 * B * T * 12 * C * C + 4 * B * T * T * C  # 2304 + 288
  assert flops.pass_flops(B, T, C) == per_pass == 2592
  head = 2 * B * T * C * V  # 672
  assert flops.backprop_passes(mc, 6) == 3
  assert flops.step_flops(mc, B, T, fwd_passes=6) == 2592 * (6 + 2 * 3) + 3 * head == 33120
  gpt = ModelConfig(name='gpt', n_embd=4, n_head=2, n_layer=6)
  assert flops.step_flops(gpt, B, T, fwd_passes=6) == 2592 * 18 + 3 * head


def test_errors():
  with pytest.raises(ValueError, match='Unknown benchmark setup'):
    setups.get_setup('huge')
  with pytest.raises(ValueError, match='Unknown model'):
    timing.run_benchmark(MICRO, rungs=('gpt', 'transformer'))
  with pytest.raises(ValueError, match='device_count=3'):
    timing.run_benchmark(MICRO, rungs=('gpt',), devices=3)
  with pytest.raises(ValueError, match='batch_size=3 does not split over 2 devices'):
    timing.run_benchmark(MICRO.replace(batch_size=3), rungs=('gpt',), devices=2)
  with pytest.raises(ValueError, match='eval_batch=5 does not split over 2 devices'):
    timing.run_benchmark(MICRO.replace(eval_batch=5), rungs=('gpt',), devices=2)
  with pytest.raises(ValueError, match='needs 152 positions'):
    timing.run_benchmark(setups.SETUPS['small'].replace(eval_lengths=(50,)))
  assert flops.peak_flops('NVIDIA H100 PCIe') == 378e12
  assert flops.peak_flops('NVIDIA H100 80GB HBM3', 'bf16') == 989e12
  assert flops.peak_flops('cpu') is None
  # MFU's basis is what the matmuls run at: the configs' float32 is full fp32, not TF32.
  assert flops.peak_basis(builders.model_config(setups.run_config(MICRO, 'trm'))) == 'fp32'
  assert flops.peak_basis(ModelConfig(dtype='bfloat16')) == 'bf16'
  assert flops.peak_basis(ModelConfig()) == 'tf32'
  assert setups.run_config(MICRO.replace(dtype='bfloat16'), 'gpt').model.dtype == 'bfloat16'


def _side_by_side():
  path = os.path.join(os.path.dirname(__file__), '..', 'benchmarks', 'side_by_side.py')
  spec = importlib.util.spec_from_file_location('side_by_side', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_side_by_side_ratios():
  """Ratios divide the paper code's ms by artrm's, per rung and measure, for the timings
  of one run; decoding matches JSON's string length keys."""
  paper = {'train_ms': {'trm': 177.0}, 'eval_ms': {'10': {'trm': 124.0}}}
  ours = {
    'rungs': {
      'trm': dict(
        train=dict(step_seconds=0.0885),
        eval={'10': dict(generate_cached=dict(sequences_per_sec=1000.0))},
      )
    }
  }
  train, decode = _side_by_side().ratio_rows(paper, ours)
  assert train == {
    'rung': 'trm', 'measure': 'train ms/step', 'paper ms': 177.0, 'artrm ms': 88.5, 'ratio': 2.0
  }  # fmt: skip
  assert decode['measure'] == 'decode ms/seq L=10, generate_cached' and decode['ratio'] == 124.0


def test_side_by_side_machine_and_missing_paths(tmp_path):
  """The machine is named; a missing checkout or python stops it in one line, before timing."""
  module = _side_by_side()
  m = module.machine()
  assert m['cpu'] and m['cores'] >= 1
  with pytest.raises(SystemExit, match='no paper checkout at'):
    module.main([f'--paper_checkout={tmp_path}', f'--paper_python={sys.executable}'])
  (tmp_path / 'models').mkdir()
  (tmp_path / 'models' / '__init__.py').touch()
  with pytest.raises(SystemExit, match='no python at') as e:
    module.check_paths(str(tmp_path), str(tmp_path / 'missing' / 'python'))
  assert '\n' not in str(e.value)
