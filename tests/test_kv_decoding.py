"""KV-cached decoding gives `decoding.generate`'s tokens on every rung.

The halting rungs get heads that make the halting step vary (ACT per position,
TRM per sequence), and the tests check that it does: a cache that misses the
passes run after a position halted would then decode differently.
"""

import functools
import re
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import tiny_model

from artrm.data import eval_set
from artrm.evaluation import decoding
from artrm.models import RUNGS, act

L = 3  # addition at L=3: prompts of 8 tokens, answers of 4


@functools.cache
def examples():
  prompts_NxP, answers_NxA = eval_set('addition', L, 8, seed=0)
  return jnp.asarray(prompts_NxP), jnp.asarray(answers_NxA)


@functools.cache
def act_updates(model):
  """Steps each position ran before halting (ACT's n), read off `act_finalize`."""
  finalize = act.act_finalize

  def updates_BxT(params, idx_BxT):
    with mock.patch.object(act, 'act_finalize', lambda a, h: (finalize(a, h)[0], a.updates_BxT)):
      return model.apply({'params': params}, idx_BxT)[1]['ponder_cost']

  return jax.jit(updates_BxT)


@functools.cache
def trm_steps(model):
  """Steps TRM runs for each sequence decoded alone."""
  return jax.jit(
    jax.vmap(
      lambda params, idx_T: model.apply({'params': params}, idx_T[None])[1]['steps_taken'],
      in_axes=(None, 0),
    )
  )


# ut_level2's y is large: a smaller kernel keeps its halting probabilities moderate.
KERNEL_SCALE = {'ut_level2': 0.3}


@functools.cache
def tiny(name, **overrides):
  """`tiny_model`; halting heads get a random kernel and the bias, from a
  sweep, that spreads the halting steps on the eval sequences most evenly (for
  ACT at moderate halting probabilities: every step's state weighs in)."""
  model, params = tiny_model(name, **overrides)
  head, halting_steps = {'act': ('act_halt', act_updates), 'q': ('q_halt', trm_steps)}.get(
    model.rung.halting, (None, None)
  )
  if head is None:
    return model, params
  kernel = KERNEL_SCALE.get(name, 1.0) * jax.random.normal(
    jax.random.key(1), params[head]['kernel'].shape
  )
  seqs_BxT = jnp.concatenate(examples(), axis=1)
  candidates = [
    {**params, head: {'kernel': kernel, 'bias': jnp.array([b])}}
    for b in np.linspace(-20.0, 20.0, 161)
  ]
  return model, max(candidates, key=lambda c: spread(halting_steps(model)(c, seqs_BxT)))


def spread(steps):
  """How many positions (or sequences) the rarest halting step has; 0 if all agree."""
  _, counts = np.unique(steps, return_counts=True)
  return counts.min() if len(counts) > 1 else 0


def halting_varies(model, params, prompts_NxP, answers_NxA):
  """Whether halting differs between the positions (ACT) or sequences (TRM) decoded."""
  P = prompts_NxP.shape[1]
  seqs_NxT = jnp.concatenate([prompts_NxP, answers_NxA[:, :-1]], axis=1)
  if model.rung.halting == 'act':
    return len(np.unique(act_updates(model)(params, seqs_NxT)[:, P - 1 :])) > 1
  return len(np.unique(trm_steps(model)(params, seqs_NxT))) > 1


def act_steps(name):
  """ACT rungs run three steps: room for positions to halt at different ones."""
  return {'max_act_steps': 3} if RUNGS[name].halting == 'act' else {}


@pytest.mark.parametrize('name', list(RUNGS))
def test_greedy_matches_generate(name):
  model, params = tiny(name, **act_steps(name))
  prompts_NxP, answers_NxA = examples()
  expected_NxA = decoding.generate(model, params, prompts_NxP, answers_NxA.shape[1])
  got_NxA = decoding.generate_cached(model, params, prompts_NxP, answers_NxA.shape[1])
  np.testing.assert_array_equal(got_NxA, expected_NxA)
  assert len(np.unique(expected_NxA)) > 1, 'a constant output would test little'
  if model.rung.halting != 'none':
    assert halting_varies(model, params, prompts_NxP, expected_NxA), 'halting must vary to bite'


@pytest.mark.parametrize('name', ['gpt_level2', 'trm'])
def test_sampled_matches_generate(name):
  model, params = tiny(name)
  prompts_NxP, answers_NxA = examples()
  sample = dict(decoding='sample', key=jax.random.key(3))
  expected_NxA = decoding.generate(model, params, prompts_NxP, answers_NxA.shape[1], **sample)
  got_NxA = decoding.generate_cached(model, params, prompts_NxP, answers_NxA.shape[1], **sample)
  np.testing.assert_array_equal(got_NxA, expected_NxA)


@pytest.mark.parametrize(
  'options', [dict(full_compute=True), dict(inference_steps=3), dict(inference_steps=1)]
)
def test_trm_options_match_generate(options):
  model, params = tiny('trm')
  prompts_NxP, answers_NxA = examples()
  expected_NxA = decoding.generate(model, params, prompts_NxP, answers_NxA.shape[1], **options)
  got_NxA = decoding.generate_cached(model, params, prompts_NxP, answers_NxA.shape[1], **options)
  np.testing.assert_array_equal(got_NxA, expected_NxA)


@pytest.mark.parametrize('name', list(RUNGS))
def test_cached_logits_match_one_forward(name):
  """Two tokens at once, then one at a time through the cache: the logits of one
  forward at every position. Each sequence runs alone, so that no other one in
  the batch keeps a halted step loop going."""
  model, params = tiny(name, **act_steps(name))
  seqs_NxT = jnp.concatenate(examples(), axis=1)
  T, P = seqs_NxT.shape[1], 2

  def apply(idx_1xT, cache):
    logits_1xTxV, aux = model.apply({'params': params}, idx_1xT, cache=cache)
    return aux['cache'], logits_1xTxV[0]

  @jax.jit
  @jax.vmap
  def cached(seq_T):
    cache, logits_PxV = apply(seq_T[None, :P], decoding.init_cache(model, 1, T))
    cache, logits_Sx1xV = jax.lax.scan(
      lambda c, token: apply(token[None, None], c), cache, seq_T[P:]
    )
    return jnp.concatenate([logits_PxV, logits_Sx1xV[:, 0]]), cache.index

  got_NxTxV, index_N = cached(seqs_NxT)
  expected_NxTxV = jax.vmap(lambda seq_T: model.apply({'params': params}, seq_T[None])[0][0])(
    seqs_NxT
  )
  np.testing.assert_allclose(got_NxTxV, expected_NxTxV, atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(index_N, T)
  if model.rung.halting == 'act':
    # A position halting before a later one is what a cache filled only up to
    # each position's own halting step would get wrong.
    n_NxS = act_updates(model)(params, seqs_NxT)[:, P:]
    later_max_NxS = np.maximum.accumulate(n_NxS[:, ::-1], axis=1)[:, ::-1]
    assert np.any(n_NxS[:, :-1] < later_max_NxS[:, 1:]), (
      'need a position halting before a later one'
    )
  if model.rung.halting == 'q':
    assert spread(trm_steps(model)(params, seqs_NxT)), 'need sequences halting at different steps'


@pytest.mark.parametrize('remat', ['none', 'full'])  # the configs decode with 'full'
@pytest.mark.parametrize('name', ['gpt', 'ut', 'trm'])
def test_cache_is_updated_in_place(name, remat):
  """No block pass copies the whole cache (it once did, twice per pass: 4x slower at L=50;
  TRM's vmapped early stop copied it every step).

  The compiled decoder may copy a full cache at most once, to initialise it;
  a copy inside the decoding loops shows up once per loop body.
  """
  model, params = tiny(name, remat=remat)
  prompts_NxP, answers_NxA = examples()
  hlo = (
    decoding.generate_cached.lower(model, params, prompts_NxP, answers_NxA.shape[1])
    .compile()
    .as_text()
  )
  cache = decoding.init_cache(model, 1, prompts_NxP.shape[1] + answers_NxA.shape[1] - 1)
  P, _, H, S, D = cache[0].shape
  copies = [
    line for line in hlo.splitlines() if re.search(rf'= f32\[{P},\d+,{H},{S},{D}\]\S* copy\(', line)
  ]
  assert len(copies) <= 1, 'the cache is copied in the decoding loop:\n' + '\n'.join(copies)


def test_too_small_cache_is_refused():
  model, params = tiny('trm')
  prompts_NxP, _ = examples()
  cache = decoding.init_cache(model, len(prompts_NxP), 12, inference_steps=1)
  with pytest.raises(ValueError, match='init_cache'):
    model.apply({'params': params}, prompts_NxP, inference_steps=2, cache=cache)
