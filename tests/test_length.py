"""The length-generalisation switches: position encodings, input injection, variable
training lengths and their checks (the paper's defaults are the goldens' business)."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import tiny_config, tiny_model

from artrm.data import eval_set
from artrm.evaluation import decoding
from artrm.models import ModelConfig, build_model, init_params, positions
from artrm.models.recipe import Recipe
from artrm.training import eval_checkpoint, train, validation


def sequences():
  """Addition at L = 3, prompt and answer: runs of digits 3, 3 and 4 long."""
  return jnp.concatenate(eval_set('addition', 3, 6, seed=0), axis=1)


def test_digit_index_continues_a_cached_run():
  idx_1xT = jnp.asarray([[1, 2, 10, 3, 4, 5, 11, 6, 13, 7, 8]])
  full_1xT = positions.digit_index(idx_1xT)
  np.testing.assert_array_equal(full_1xT, [[1, 2, 0, 1, 2, 3, 0, 1, 0, 1, 2]])
  for split in (1, 4, 7):
    last_1 = positions.digit_index(idx_1xT[:, :split])[:, -1]
    np.testing.assert_array_equal(
      positions.digit_index(idx_1xT[:, split:], last_1), full_1xT[:, split:]
    )
  index_1xT = positions.abacus_index(idx_1xT, None, jnp.asarray([5]))
  np.testing.assert_array_equal(index_1xT, np.where(full_1xT > 0, full_1xT + 5, 0))


def test_digit_runs_count_down_after_a_run_in_pieces_as_whole():
  """With count_down, reverse's answer digit k reads the index of input digit n + 1 - k
  (here, n = 4, offset 5); with separator, the token right after a run reads n + 1. A
  cache split inside either run, on the separator or in the padding carries what a
  single pass over the sequence reads."""
  idx_1xT = jnp.asarray([[1, 2, 3, 4, 12, 4, 3, 2, 1, 13, 13, 5]])
  modes = ((True, False), (True, True), (False, True))  # (count_down, separator)
  expected = [
    [6, 7, 8, 9, 0, 9, 8, 7, 6, 0, 0, 9],
    [6, 7, 8, 9, 10, 9, 8, 7, 6, 10, 0, 9],
    [6, 7, 8, 9, 10, 6, 7, 8, 9, 10, 0, 6],
  ]

  @jax.jit  # one program per shape: eager, every op of every split would compile apart
  def runs_and_indices(idx_1xT, last_1x2):
    index = lambda down, sep: positions.abacus_index(
      idx_1xT, last_1x2, jnp.asarray([5]), count_down=down, separator=sep
    )[0]
    return positions.digit_runs(idx_1xT, last_1x2), jnp.stack([index(*m) for m in modes])

  full_1xTx2, indices = runs_and_indices(idx_1xT, None)
  np.testing.assert_array_equal(indices, expected)
  np.testing.assert_array_equal(full_1xTx2[0, :, 1], [0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4])
  for split in (2, 4, 5, 7, 9, 11):  # in either run, on the separator, in the padding
    last_1x2 = runs_and_indices(idx_1xT[:, :split], None)[0][:, -1]
    runs_1xSx2, indices = runs_and_indices(idx_1xT[:, split:], last_1x2)
    np.testing.assert_array_equal(runs_1xSx2, full_1xTx2[:, split:])
    np.testing.assert_array_equal(indices, np.asarray(expected)[:, split:])


def test_abacus_gaps_space_indices_alike_in_every_run():
  """With gaps, digit k of every run reads offset + g_1 + ... + g_k: equal significance,
  equal row, whatever run (operand or answer) the digit is in."""
  idx_1xT = jnp.asarray([[1, 2, 10, 3, 4, 5, 11, 6, 13, 7, 8]])
  gaps_1xK = jnp.asarray([[3, 1, 2, 5]])
  index_1xT = positions.abacus_index(idx_1xT, None, jnp.asarray([5]), gaps_1xK)
  np.testing.assert_array_equal(index_1xT, [[8, 9, 0, 8, 9, 11, 0, 8, 0, 8, 9]])
  ones_1xK = jnp.ones_like(gaps_1xK)
  np.testing.assert_array_equal(
    positions.abacus_index(idx_1xT, None, jnp.asarray([5]), ones_1xK),
    positions.abacus_index(idx_1xT, None, jnp.asarray([5])),
  )


def test_rope_scores_depend_on_relative_positions():
  q_D, k_D = jax.random.normal(jax.random.key(0), (2, 8))
  score = lambda i, j: jnp.dot(
    positions.rope(q_D[None, None], jnp.asarray([[i]]), 1)[0, 0],
    positions.rope(k_D[None, None], jnp.asarray([[j]]), 1)[0, 0],
  )
  np.testing.assert_allclose(score(7, 3), score(24, 20), rtol=1e-5)
  assert not np.isclose(score(7, 3), score(7, 4))
  np.testing.assert_allclose(score(0, 0), jnp.dot(q_D, k_D), rtol=1e-6)


CASES = [
  ('none', 'ut_level1', {}),
  ('rope', 'ut', {'input_injection': True}),
  (
    'abacus',
    'gpt_level2',
    {'abacus_max_offset': 4, 'abacus_max_gap': 3, 'abacus_count_down': True},
  ),
  ('abacus_rope', 'gpt', {'abacus_max_gap': 3, 'abacus_separator': True}),
]


@pytest.mark.parametrize('pos_encoding,name,overrides', CASES)
def test_causal_and_cached_decoding_matches_one_forward(pos_encoding, name, overrides):
  """A later token never changes earlier logits (in training too, abacus offsets and gaps
  drawn), and decoding through the KV cache, two tokens then one at a time, gives each
  position the logits of one forward (a digit run split across calls keeps its indices)."""
  model, params = tiny_model(name, block_size=24, pos_encoding=pos_encoding, **overrides)
  seqs_NxT = sequences()
  T, P, t = seqs_NxT.shape[1], 2, 5
  other_NxT = seqs_NxT.at[:, t + 1 :].set((seqs_NxT[:, t + 1 :] + 3) % 14)
  train_mode = dict(deterministic=False, rngs={'dropout': jax.random.key(2)})

  @jax.jit
  def run(params, seqs_NxT, other_NxT):
    one = lambda idx, **kw: jax.vmap(
      lambda s: model.apply({'params': params}, s[None], **kw)[0][0]
    )(idx)

    def cached(seq_T):
      apply = lambda idx, cache: model.apply({'params': params}, idx[None], cache=cache)
      logits_1xPxV, aux = apply(seq_T[:P], decoding.init_cache(model, 1, T))
      step = lambda cache, token: (lambda o: (o[1]['cache'], o[0][0, 0]))(apply(token[None], cache))
      _, logits_SxV = jax.lax.scan(step, aux['cache'], seq_T[P:])
      return jnp.concatenate([logits_1xPxV[0], logits_SxV])

    out = (one(seqs_NxT), one(other_NxT), jax.vmap(cached)(seqs_NxT))
    if not offsets:
      return out
    return out + (one(seqs_NxT, **train_mode), one(other_NxT, **train_mode))

  offsets = bool(overrides.get('abacus_max_offset') or overrides.get('abacus_max_gap'))
  full, changed, cached, *trained = run(params, seqs_NxT, other_NxT)
  chex.assert_trees_all_close(full[:, : t + 1], changed[:, : t + 1], atol=1e-6)
  assert not np.allclose(full[:, t + 1 :], changed[:, t + 1 :]), 'later logits see the change'
  np.testing.assert_allclose(cached, full, atol=1e-5, rtol=1e-5)
  if offsets:
    chex.assert_trees_all_close(trained[0][:, : t + 1], trained[1][:, : t + 1], atol=1e-6)
    assert not np.allclose(trained[0], full), 'training draws abacus offsets, evaluation none'


def test_input_injection_adds_x_after_the_first_pass():
  """The first pass sees x as in the paper; later passes see it again."""
  paper, params = tiny_model('gpt_level1', block_size=24)
  injected = build_model(dataclasses.replace(paper.config, input_injection=True))
  logits = jax.jit(
    lambda model, steps: model.apply({'params': params}, sequences(), inference_steps=steps)[0],
    static_argnums=(0, 1),
  )
  np.testing.assert_array_equal(logits(paper, 1), logits(injected, 1))
  assert not np.allclose(logits(paper, 2), logits(injected, 2))


@pytest.mark.parametrize(
  'changes,match',
  [
    (dict(pos_encoding='alibi'), "Unknown model.pos_encoding 'alibi'"),
    (dict(pos_encoding='rope', n_embd=12, n_head=4), 'choose n_embd / n_head even'),
    (dict(abacus_max_offset=3), 'use pos_encoding=abacus'),
    (dict(pos_encoding='abacus_rope', abacus_max_offset=3), 'abacus_rope scores index differences'),
    (dict(abacus_max_gap=2), 'use pos_encoding=abacus'),
    (dict(pos_encoding='abacus', abacus_max_gap=0), 'must be >= 1'),
    (dict(abacus_count_down=True), 'use pos_encoding=abacus'),
    (dict(abacus_separator=True), 'abacus_separator applies to pos_encoding=abacus'),
    (dict(name='trm', input_injection=True), 'trm injects x at every z-update'),
    (dict(name='gpt', input_injection=True), 'gpt has distinct blocks'),
  ],
)
def test_model_config_errors_name_the_fix(changes, match):
  with pytest.raises(ValueError, match=match):
    ModelConfig(**changes)


def test_rope_needs_attention():
  model = build_model(
    ModelConfig(name='gpt', n_embd=16, n_head=2, n_layer=1, block_size=8, pos_encoding='rope'),
    Recipe(mixer='mlp'),
  )
  with pytest.raises(ValueError, match='recipe.mixer=mlp has none'):
    init_params(model, jax.random.key(0))


def test_length_checks_before_any_work():
  c = tiny_config('gpt', task='addition', train_length_min=4)
  with pytest.raises(validation.ConfigError, match='train_length_min=4: must be 0'):
    validation.check_config(c)
  c = tiny_config('gpt', task='addition', train_length_min=1)
  c.eval.lengths = (3, 9)
  with pytest.raises(ValueError, match='needs 29 positions .* raise model.block_size'):
    validation.check_config(c)
  c.eval.lengths = (3, 6)
  c.model.update(pos_encoding='abacus', abacus_max_offset=2)
  with pytest.raises(validation.ConfigError, match='raise model.abacus_max_offset to 3'):
    validation.check_config(c)
  c.model.abacus_max_offset = 3
  validation.check_config(c)
  c.model.update(abacus_max_offset=0, abacus_max_gap=2)  # gaps reach 4 x 2 = 8 >= 7
  validation.check_config(c)
  c.model.abacus_separator = True  # the token after the answer reads 8 > (4 + 1) x 1 + 2
  c.model.update(abacus_max_offset=2, abacus_max_gap=1)
  with pytest.raises(
    validation.ConfigError, match='reads digit index 8, .* raise model.abacus_max_offset to 3'
  ):
    validation.check_config(c)
  c.model.update(abacus_max_offset=3, abacus_count_down=True)
  with pytest.raises(validation.ConfigError, match='suits one operand .* set it False'):
    validation.check_config(c)
  c.task = 'reverse'
  validation.check_config(c)


def test_resolve_steps():
  assert eval_checkpoint.resolve_steps(['1x', '2x', '1.5x', 5, '7'], trained=4) == [4, 8, 6, 5, 7]
  for bad in ('0x', 'two', '0'):
    with pytest.raises(validation.ConfigError, match='--inference_steps=1x,2x,4x'):
      eval_checkpoint.resolve_steps([bad], trained=4)


def test_trains_with_every_switch(tmp_path):
  """Variable lengths, abacus offsets and gaps, input injection through the training loop, then
  an evaluation at twice the trained steps (and at a longer length)."""
  c = tiny_config('ut', train_length_min=1, max_steps=4)
  c.model.update(pos_encoding='abacus', abacus_max_offset=2, abacus_max_gap=2)
  c.model.input_injection = True
  train.train_and_evaluate(c, str(tmp_path))
  scaled = eval_checkpoint.inference_scaling(str(tmp_path), ['2x'], overrides={'lengths': ['5']})
  assert scaled['inference_passes'] == {4: 4} and set(scaled['results'][4][c.seed]) == {5}
