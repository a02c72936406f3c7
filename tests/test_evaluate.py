"""Decoding, answer metrics and the length evaluator."""

import csv
import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import tiny_model

from artrm import parallel
from artrm.data import eval_set
from artrm.evaluation import decoding
from artrm.evaluation.evaluators import LengthEvaluator
from artrm.evaluation.metrics import answer_metrics
from artrm.workdir import metric_rows

L = 3  # copy at L=3: prompts of 4 tokens, answers of 3


@functools.cache
def prompts():
  return eval_set('copy', L, 8, seed=0)[0]


@functools.cache
def apply_alone(model):
  """Logits and aux of each sequence run as a batch of one."""
  return jax.jit(
    jax.vmap(lambda p, idx_T: model.apply({'params': p}, idx_T[None]), in_axes=(None, 0))
  )


@functools.cache
def halting_trm():
  """`trm` whose Q-head halts about half of the prompts after step one, through token 0.

  The head reads position 0, which sees only the first token; a random kernel
  and a bias picked from a sweep split the prompts between 1 and 2 steps.
  """
  model, params = tiny_model('trm')
  kernel = jax.random.normal(jax.random.key(1), params['q_halt']['kernel'].shape)
  candidates = [
    {**params, 'q_halt': {'kernel': kernel, 'bias': jnp.array([b])}}
    for b in np.linspace(-8.0, 8.0, 33)
  ]
  early = np.array(
    [np.mean(apply_alone(model)(c, prompts())[1]['steps_taken'] == 1) for c in candidates]
  )
  best = int(np.argmin(np.abs(early - 0.5)))
  assert 0 < early[best] < 1, early
  return model, candidates[best]


def params_for(name):
  return halting_trm() if name == 'trm' else tiny_model(name)


def greedy_loop(model, params, prompts_NxP, answer_len):
  """The reference's rule: one sequence at a time, growing, argmax of the last logits."""
  last_logits = jax.jit(lambda idx_1xT: model.apply({'params': params}, idx_1xT)[0][0, -1])
  out = []
  for prompt in prompts_NxP:
    seq = list(prompt)
    for _ in range(answer_len):
      seq.append(int(jnp.argmax(last_logits(jnp.array([seq])))))
    out.append(seq[len(prompt) :])
  return np.array(out)


# -- metrics ------------------------------------------------------------------


def test_answer_metrics_hand_made():
  answer = np.zeros((2, 11), np.int32)
  pred = answer.copy()
  pred[1, [0, 4, 10]] = 7  # row 0 exact; row 1 wrong at 0, 4 and 10
  m = answer_metrics(pred, answer)
  # Quarters of A = 11 are positions [0-2], [3-5], [6-8], [9-10].
  expected = dict(
    char_acc=19 / 22,
    seq_acc=0.5,
    first_char_acc=0.5,
    last_char_acc=0.5,
    q1=5 / 6,
    q2=5 / 6,
    q3=1.0,
    q4=3 / 4,
  )
  assert set(m) == {*expected, 'per_position'}
  for k, v in expected.items():
    assert m[k] == pytest.approx(v), k
  assert m['per_position'] == [0.5, 1, 1, 1, 0.5, 1, 1, 1, 1, 1, 0.5]
  assert all(type(v) is float for k, v in m.items() if k != 'per_position')


def test_answer_metrics_short_answer_and_errors():
  m = answer_metrics(np.array([[1, 2, 3]]), np.array([[1, 0, 3]]))
  assert (m['q1'], m['q2'], m['q3'], 'q4' in m) == (1.0, 0.0, 1.0, False)
  with pytest.raises(ValueError, match='same non-empty'):
    answer_metrics(np.zeros((2, 3)), np.zeros((2, 4)))


def test_metric_rows():
  rows = metric_rows({3: dict(seq_acc=0.5, per_position=[1.0, 0.0])}, task='copy')
  assert rows == [
    dict(task='copy', eval_length=3, metric='seq_acc', value=0.5),
    dict(task='copy', eval_length=3, metric='pos0', value=1.0),
    dict(task='copy', eval_length=3, metric='pos1', value=0.0),
  ]


# -- decoding -----------------------------------------------------------------


@pytest.mark.parametrize('name', ['gpt', 'ut', 'trm'])
def test_greedy_matches_growing_sequence_loop(name):
  """The padded, batched buffer decodes token for token as one growing sequence at a time."""
  model, params = params_for(name)
  expected_NxA = greedy_loop(model, params, prompts(), L)
  got_NxA = decoding.generate(model, params, prompts(), L)
  np.testing.assert_array_equal(got_NxA, expected_NxA)
  assert len(np.unique(expected_NxA)) > 1, 'a constant output would test little'


def test_trm_batch_equals_each_sequence_alone():
  model, params = halting_trm()
  batch_logits = model.apply({'params': params}, prompts())[0]
  alone_logits = apply_alone(model)(params, prompts())[0][:, 0]
  assert not np.allclose(batch_logits, alone_logits), 'the batch must couple for this test to bite'
  batch_NxA = decoding.generate(model, params, prompts(), L)
  alone_NxA = np.concatenate(
    [decoding.generate(model, params, p_1xP, L) for p_1xP in np.split(prompts(), len(prompts()))]
  )
  np.testing.assert_array_equal(batch_NxA, alone_NxA)


def test_sampling_is_reproducible_per_key():
  model, params = tiny_model('ut')
  sample = functools.partial(decoding.generate, model, params, prompts(), L, decoding='sample')
  first = sample(key=jax.random.key(0))
  np.testing.assert_array_equal(first, sample(key=jax.random.key(0)))
  assert not np.array_equal(first, sample(key=jax.random.key(1)))
  assert first.shape == (len(prompts()), L) and 0 <= first.min() and first.max() < 14
  with pytest.raises(ValueError, match='needs a PRNG key'):
    sample()


def test_jit_and_eager_agree():
  model, params = tiny_model('ut')
  jitted = decoding.generate(model, params, prompts(), L)
  with jax.disable_jit():
    eager = decoding.generate(model, params, prompts(), L)
  chex.assert_trees_all_equal(np.asarray(jitted), np.asarray(eager))


def test_too_long_is_a_clear_error():
  model, params = tiny_model('gpt')  # block_size 40: copy needs 2L positions
  with pytest.raises(ValueError, match='needs 41 positions.*raise model.block_size'):
    decoding.generate(model, params, eval_set('copy', 20, 2, 0)[0], 21)
  evaluator = LengthEvaluator('copy', (3, 21), n_samples=2, seed=0, batch_size=2)
  with pytest.raises(ValueError, match='copy at length 21 needs 42 positions'):
    evaluator.run(model, params)
  with pytest.raises(ValueError, match='Unknown decoding'):
    LengthEvaluator('copy', (3,), n_samples=2, seed=0, batch_size=2, decoding='beam')


# -- evaluator ----------------------------------------------------------------


def test_evaluator_batches_compile_once_and_write(tmp_path):
  model, params = tiny_model('gpt')
  evaluator = LengthEvaluator('copy', [3, 4], n_samples=5, seed=0, batch_size=2)
  compiled = decoding.generate._cache_size()
  results = evaluator.run(model, params)
  assert decoding.generate._cache_size() - compiled == 2, 'one program per length'
  for length in (3, 4):
    prompts_NxP, answers_NxA = eval_set('copy', length, 5, 0)
    whole = answer_metrics(decoding.generate(model, params, prompts_NxP, length), answers_NxA)
    assert results[length] == whole, 'chunks and padding change nothing'

  json_path, csv_path = evaluator.write(results, str(tmp_path), 10, name='seed0')
  assert json_path.endswith('eval/seed0_step_000010.json')
  with open(json_path) as f:
    saved = json.load(f)
  assert saved['results']['4'] == results[4] and saved['settings']['decoding'] == 'greedy'
  read_rows = lambda: list(csv.DictReader(open(csv_path)))
  n_rows = len(metric_rows(results))
  assert len(read_rows()) == n_rows
  evaluator.write(results, str(tmp_path), 10, name='seed0')  # a repeated evaluation replaces
  assert len(read_rows()) == n_rows
  evaluator.write(results, str(tmp_path), 20, name='seed0')
  rows = read_rows()
  assert len(rows) == 2 * n_rows
  assert {r['step'] for r in rows} == {'10', '20'}
  assert rows[0]['inference_steps'] == '' and rows[0]['task'] == 'copy'


@pytest.mark.parametrize('name', ['gpt', 'ut', 'trm'])  # distinct layers, ACT, halting TRM
def test_evaluator_kv_cache_gives_the_same_metrics(name):
  model, params = params_for(name)
  run = lambda kv_cache: LengthEvaluator(
    'copy', [3, 5], n_samples=6, seed=0, batch_size=4, kv_cache=kv_cache
  ).run(model, params)
  cached, reference = run(True), run(False)
  assert cached == reference
  assert any(m['char_acc'] not in (0.0, 1.0) for m in reference.values()), 'a trivial case'


@pytest.mark.parametrize('decoding_rule', ['greedy', 'sample'])
def test_evaluator_split_over_devices_gives_the_same_metrics(decoding_rule, monkeypatch):
  """Prompts split over 2 fake devices (params replicated there): the same answers, sampled
  ones too (threefry is partitionable), with per-sequence TRM halting. Chunks of 3
  prompts are padded to 4 to split; the padding changes no answer."""
  model, params = params_for('trm')
  mesh = parallel.data_mesh()
  assert mesh.devices.size == 2, 'conftest fakes two CPU devices'
  chunk = parallel.shard_batch(np.zeros((4, 3), np.int32), mesh)
  assert chunk.sharding.spec == jax.sharding.PartitionSpec(parallel.DATA_AXIS)
  assert parallel.shard_batch(np.zeros((3, 3), np.int32), mesh).sharding.is_fully_replicated
  evaluator = LengthEvaluator(
    'copy', [3, 5], n_samples=6, seed=0, batch_size=3, decoding=decoding_rule, kv_cache=True
  )
  shard_batch, chunks = parallel.shard_batch, []
  monkeypatch.setattr(
    parallel, 'shard_batch', lambda x, mesh: chunks.append(shard_batch(x, mesh)) or chunks[-1]
  )
  split = evaluator.run(model, jax.device_put(params, parallel.replicated(mesh)), mesh)
  assert [c.shape[0] for c in chunks] == [4] * 4  # 2 lengths x 2 chunks of 3, padded
  assert all(not c.sharding.is_fully_replicated for c in chunks)
  assert split == evaluator.run(model, params)
