"""Vocabulary, task layouts, loss masks, the device sampler against the reference, eval sets."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from artrm.data import (
  CHARS,
  IGNORE_INDEX,
  NEWLINE_ID,
  TASKS,
  VOCAB_SIZE,
  decode,
  encode,
  eval_digits,
  eval_set,
  format_example,
  get_task,
  python_batch,
  python_rows,
  rows_from_digits,
  same_layout,
  sample_batch,
  sample_batch_of,
)

X = IGNORE_INDEX


def digits_of(*operands: str) -> np.ndarray:
  return np.array([[int(c) for c in op] for op in operands])


def test_vocab_ids_and_round_trip():
  assert VOCAB_SIZE == 14 and CHARS == '0123456789|+=\n' and NEWLINE_ID == 13
  np.testing.assert_array_equal(encode(CHARS), np.arange(14))
  assert encode('12+3').dtype == np.int32
  text = '0123+4567=04690\n\n'
  assert decode(encode(text)) == text
  assert decode(jnp.asarray(encode(text))) == text
  with pytest.raises(ValueError, match=r"\['a', 'x'\]"):
    encode('1x2a')


@pytest.mark.parametrize(
  'task_name, digits, text',
  [
    ('copy', digits_of('123'), '123|123'),
    ('copy', digits_of('0'), '0|0'),
    ('reverse', digits_of('1203'), '1203|3021'),
    ('addition', digits_of('95', '07'), '95+07=102'),
    ('addition', digits_of('12', '34'), '12+34=046'),
    ('addition', digits_of('00', '00'), '00+00=000'),
    ('addition', digits_of('9', '9'), '9+9=18'),
    ('addition_rev', digits_of('95', '07'), '95+07=921'),
    ('addition_rev', digits_of('12', '34'), '12+34=460'),
  ],
)
def test_format_examples(task_name, digits, text):
  assert format_example(task_name, digits) == text


@pytest.mark.parametrize('L', [1, 3, 50])
def test_lengths(L):
  expected = {'copy': (L + 1, L), 'reverse': (L + 1, L)}
  expected.update(dict.fromkeys(['addition', 'addition_rev'], (2 * L + 2, L + 1)))
  for name, task in TASKS.items():
    prompt_len, answer_len = expected[name]
    text = format_example(name, np.zeros((task.n_operands, L), int))
    assert (task.prompt_len(L), task.answer_len(L)) == (prompt_len, answer_len)
    assert task.example_len(L) == len(text) == prompt_len + answer_len
    assert task.seq_len(L) == task.example_len(L)
    assert text[task.prompt_len(L) - 1] == task.operators[-1]


def test_masks_on_hand_examples():
  rows = python_rows('addition', digits_of('95', '07')[None], seq_len=12)
  #        inputs:   9  5  +  0  7  =  1  0  2 \n \n \n
  np.testing.assert_array_equal(rows['inputs'][0], [9, 5, 11, 0, 7, 12, 1, 0, 2, 13, 13, 13])
  np.testing.assert_array_equal(rows['targets'][0], [X, X, X, X, X, 1, 0, 2, 13, X, X, X])
  rows = python_rows('copy', digits_of('12')[None])  # shortest: T = 5
  np.testing.assert_array_equal(rows['inputs'][0], encode('12|12'))
  np.testing.assert_array_equal(rows['targets'][0], [X, X, 1, 2, 13])


@pytest.mark.parametrize('task_name', sorted(TASKS))
def test_shortest_seq_len_holds_exactly_the_kept_targets(task_name):
  task, L = TASKS[task_name], 4
  targets_BxT = python_batch(task_name, L, np.random.default_rng(0), 8)['targets']
  assert targets_BxT.shape == (8, task.seq_len(L))
  kept_BxT = targets_BxT != X
  assert (kept_BxT.sum(1) == task.answer_len(L) + 1).all()
  assert (
    kept_BxT[:, task.prompt_len(L) - 1].all() and not kept_BxT[:, : task.prompt_len(L) - 1].any()
  )
  assert (targets_BxT[:, -1] == NEWLINE_ID).all()
  with pytest.raises(ValueError, match='need at least'):
    python_batch(task_name, L, np.random.default_rng(0), 8, seq_len=task.seq_len(L) - 1)


@pytest.mark.parametrize('task_name', sorted(TASKS))
@pytest.mark.parametrize('L', [1, 2, 10, 37])
@pytest.mark.parametrize('extra', [0, 7])
def test_device_rows_match_reference(task_name, L, extra):
  task = TASKS[task_name]
  seq_len = task.seq_len(L) + extra
  digits_BxNxL = np.random.default_rng(L).integers(0, 10, (16, task.n_operands, L))
  expected = python_rows(task_name, digits_BxNxL, seq_len)
  got = rows_from_digits(task_name, jnp.asarray(digits_BxNxL), seq_len)
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, got), expected)
  chex.assert_type([got['inputs'], got['targets']], jnp.int32)


@pytest.mark.parametrize('L', [1, 37, 50])
def test_addition_carries_through_every_digit(L):
  digits_BxNxL = np.stack(
    [
      digits_of('9' * L, '9' * L),
      digits_of('9' * L, '0' * (L - 1) + '1'),
      digits_of('5' * L, '4' * (L - 1) + '5'),
    ]
  )
  got = rows_from_digits('addition', digits_BxNxL)['inputs']
  answers = [decode(row[2 * L + 2 :]) for row in np.asarray(got)]
  assert answers == ['1' + '9' * (L - 1) + '8', '1' + '0' * L, '1' + '0' * L]
  chex.assert_trees_all_equal(np.asarray(got), python_rows('addition', digits_BxNxL)['inputs'])


@pytest.mark.parametrize('task_name', sorted(TASKS))
def test_sample_batch_rows_are_reference_rows_and_padding_only_appends(task_name):
  task, key, L = TASKS[task_name], jax.random.key(3), 6
  T = task.seq_len(L)
  padded = sample_batch(key, task_name, L, 32, seq_len=T + 9)
  prompts_BxP = np.asarray(padded['inputs'][:, : task.prompt_len(L)])
  digits_BxNxL = prompts_BxP.reshape(32, task.n_operands, L + 1)[:, :, :L]
  chex.assert_trees_all_equal(
    jax.tree.map(np.asarray, padded), python_rows(task_name, digits_BxNxL, T + 9)
  )
  chex.assert_trees_all_equal(
    jax.tree.map(lambda a: a[:, :T], padded), rows_from_digits(task_name, digits_BxNxL)
  )
  assert (padded['inputs'][:, T:] == NEWLINE_ID).all() and (padded['targets'][:, T:] == X).all()


@pytest.mark.parametrize('task_name', ['reverse', 'addition_rev'])
def test_variable_length_rows_are_reference_rows_of_their_length(task_name):
  """Each row of a mixed-length batch is the reference row of its own length, from
  position 0, padded with newlines that the targets ignore to the batch's length."""
  task, L, shortest = TASKS[task_name], 5, 2
  batch = sample_batch(jax.random.key(4), task_name, L, 64, min_length=shortest)
  inputs_BxT, targets_BxT = np.asarray(batch['inputs']), np.asarray(batch['targets'])
  assert inputs_BxT.shape == (64, task.seq_len(L))
  lengths_B = np.argmax(inputs_BxT == encode(task.operators[0])[0], axis=1)
  assert set(lengths_B) == set(range(shortest, L + 1))
  for inputs_T, targets_T, n in zip(inputs_BxT, targets_BxT, lengths_B):
    digits_NxL = inputs_T[: task.prompt_len(n)].reshape(task.n_operands, n + 1)[:, :n]
    expected = python_rows(task_name, digits_NxL[None], task.seq_len(L))
    np.testing.assert_array_equal(inputs_T, expected['inputs'][0])
    np.testing.assert_array_equal(targets_T, expected['targets'][0])
  with pytest.raises(ValueError, match='set train_length_min in that range'):
    sample_batch(jax.random.key(4), task_name, L, 8, min_length=L + 1)


def test_sample_batch_jit_matches_eager_and_keys_matter():
  key = jax.random.key(7)
  jitted = sample_batch(key, 'addition', 3, 8, seq_len=20)
  with jax.disable_jit():
    eager = sample_batch(key, 'addition', 3, 8, seq_len=20)
  chex.assert_trees_all_equal(jitted, eager)
  chex.assert_trees_all_equal(sample_batch(key, 'addition', 3, 8, seq_len=20), jitted)
  assert not np.array_equal(
    sample_batch(jax.random.key(8), 'addition', 3, 8, seq_len=20)['inputs'], jitted['inputs']
  )


@pytest.mark.parametrize('task_name', sorted(TASKS))
def test_a_task_picked_at_run_time_gives_its_own_rows(task_name):
  """One program (the task index traced) samples each task of a layout as `sample_batch` does."""
  tasks, key = same_layout(task_name), jax.random.key(5)
  assert task_name in tasks and {tuple(TASKS[t].operators for t in tasks)} == {
    (TASKS[task_name].operators,) * len(tasks)
  }
  pick = jax.jit(sample_batch_of, static_argnums=(1, 3, 4))
  batch = pick(key, tasks, jnp.int32(tasks.index(task_name)), 4, 8)
  chex.assert_trees_all_equal(batch, sample_batch(key, task_name, 4, 8))


def test_copy_and_reverse_share_a_layout():
  assert same_layout('copy') == same_layout('reverse') == ('copy', 'reverse')
  assert same_layout('addition') == same_layout('addition_rev') == ('addition', 'addition_rev')


def test_digits_are_roughly_uniform():
  inputs_BxT = np.asarray(sample_batch(jax.random.key(1), 'copy', 10, 4096)['inputs'])
  counts = np.bincount(inputs_BxT[:, :10].ravel(), minlength=10)
  np.testing.assert_allclose(counts / counts.sum(), 0.1, atol=0.005)  # ~6 sigma
  counts = np.bincount(eval_digits('addition', 10, 2048, 0).ravel(), minlength=10)
  np.testing.assert_allclose(counts / counts.sum(), 0.1, atol=0.005)


def test_eval_set_is_pinned_and_consistent():
  # Pinned values: a change here means evaluation sets moved across versions or machines.
  texts = {
    name: [decode(np.concatenate(pa)) for pa in zip(*eval_set(name, 4, 3, 0))] for name in TASKS
  }
  assert texts == {
    'copy': ['4842|4842', '8464|8464', '0712|0712'],
    'reverse': ['6943|3496', '3885|5883', '6835|5386'],
    'addition': ['2579+0507=03086', '7877+3172=11049', '8012+0139=08151'],
    'addition_rev': ['7337+6707=31441', '2750+9634=14940', '2191+1038=31201'],
  }
  prompts, answers = eval_set('addition', 7, 50, 3)
  chex.assert_shape([prompts, answers], [(50, 16), (50, 8)])
  chex.assert_type([prompts, answers], np.int32)
  assert (prompts[:, -1] == encode('=')[0]).all()
  for digits_NxL, prompt, answer in zip(eval_digits('addition', 7, 50, 3), prompts, answers):
    assert decode(prompt) + decode(answer) == format_example('addition', digits_NxL)
  assert not prompts.flags.writeable  # cached, so shared between callers


def test_eval_set_deterministic_prefix_and_distinct():
  first = eval_set('reverse', 10, 100, 5)
  eval_set.cache_clear()
  eval_digits.cache_clear()
  chex.assert_trees_all_equal(eval_set('reverse', 10, 100, 5), first)
  chex.assert_trees_all_equal(eval_set('reverse', 10, 20, 5), jax.tree.map(lambda a: a[:20], first))
  assert not np.array_equal(eval_set('reverse', 10, 100, 6)[0], first[0])
  assert not np.array_equal(eval_set('copy', 10, 100, 5)[0], first[0])
  assert not np.array_equal(eval_set('reverse', 11, 100, 5)[0][:, :10], first[0][:, :10])


def test_errors_name_what_is_allowed():
  with pytest.raises(
    ValueError, match=r"Unknown task 'sort'.*\['addition', 'addition_rev', 'copy'"
  ):
    get_task('sort')
  with pytest.raises(ValueError, match=r"Unknown task 'mul'"):
    sample_batch(jax.random.key(0), 'mul', 3, 2)
  for bad_L in (0, -2):
    with pytest.raises(ValueError, match='L must be an integer >= 1'):
      eval_set('copy', bad_L, 4, 0)
    with pytest.raises(ValueError, match='L must be an integer >= 1'):
      sample_batch(jax.random.key(0), 'copy', bad_L, 2)
  with pytest.raises(ValueError, match=r'addition digits must be \[B, 2, L\]'):
    rows_from_digits('addition', np.zeros((2, 1, 3), int))
  with pytest.raises(ValueError, match='digits must lie in 0..9'):
    format_example('copy', [[1, 12]])
  with pytest.raises(ValueError, match='seed must be an integer >= 0'):
    eval_set('copy', 3, 4, -1)
