"""KV-cached decoding gives `decoding.generate`'s tokens on every rung.

The halting rungs get heads that make the halting step vary (ACT per position,
TRM per sequence), and the tests check that it does: a cache that misses the
passes run after a position halted would then decode differently.
"""

import functools
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from artrm import decoding
from artrm.data import eval_set
from artrm.models import RUNGS, ModelConfig, act, build_model, init_params

L = 3   # addition at L=3: prompts of 8 tokens, answers of 4


@functools.cache
def examples():
  prompts_NxP, answers_NxA = eval_set('addition', L, 8, seed=0)
  return jnp.asarray(prompts_NxP), jnp.asarray(answers_NxA)


def act_updates(model, params, idx_BxT):
  """Steps each position ran before halting (ACT's n), read off `act_finalize`."""
  finalize = act.act_finalize
  with mock.patch.object(act, 'act_finalize', lambda a, h: (finalize(a, h)[0], a.updates_BxT)):
    return np.asarray(model.apply({'params': params}, idx_BxT)[1]['ponder_cost'])


def trm_steps(model, params, idx_BxT):
  """Steps TRM runs for each sequence decoded alone."""
  alone = jax.vmap(lambda idx_T: model.apply({'params': params}, idx_T[None])[1]['steps_taken'])
  return np.asarray(alone(idx_BxT))


@functools.cache
def tiny(name, **overrides):
  """A random tiny model; halting heads get a random kernel and the bias, from a
  sweep, that spreads the halting steps on the eval sequences most evenly."""
  model = build_model(ModelConfig(name=name, n_embd=32, n_head=4, n_layer=2, block_size=40,
                                  **overrides))
  params = init_params(model, jax.random.key(0))
  head, halting_steps = {'act': ('act_halt', act_updates), 'q': ('q_halt', trm_steps)}.get(
      model.rung.halting, (None, None))
  if head is None:
    return model, params
  kernel = 50.0 * jax.random.normal(jax.random.key(1), params[head]['kernel'].shape)
  seqs_BxT = jnp.concatenate(examples(), axis=1)
  candidates = [{**params, head: {'kernel': kernel, 'bias': jnp.array([b])}}
                for b in np.linspace(-10.0, 20.0, 31)]
  return model, max(candidates, key=lambda c: spread(halting_steps(model, c, seqs_BxT)))


def spread(steps):
  """How many positions (or sequences) the rarest halting step has; 0 if all agree."""
  _, counts = np.unique(steps, return_counts=True)
  return counts.min() if len(counts) > 1 else 0


def halting_varies(model, params, prompts_NxP, answers_NxA):
  """Whether halting differs between the positions (ACT) or sequences (TRM) decoded."""
  P = prompts_NxP.shape[1]
  seqs_NxT = jnp.concatenate([prompts_NxP, answers_NxA[:, :-1]], axis=1)
  if model.rung.halting == 'act':
    return len(np.unique(act_updates(model, params, seqs_NxT)[:, P - 1:])) > 1
  return len(np.unique(trm_steps(model, params, seqs_NxT))) > 1


@pytest.mark.parametrize('name', list(RUNGS))
def test_greedy_matches_generate(name):
  model, params = tiny(name, **({'max_act_steps': 3} if RUNGS[name].halting == 'act' else {}))
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


@pytest.mark.parametrize('options', [dict(full_compute=True), dict(inference_steps=3),
                                     dict(inference_steps=1)])
def test_trm_options_match_generate(options):
  model, params = tiny('trm')
  prompts_NxP, answers_NxA = examples()
  expected_NxA = decoding.generate(model, params, prompts_NxP, answers_NxA.shape[1], **options)
  got_NxA = decoding.generate_cached(model, params, prompts_NxP, answers_NxA.shape[1], **options)
  np.testing.assert_array_equal(got_NxA, expected_NxA)


@pytest.mark.parametrize('name', ['gpt', 'ut_level1', 'trm'])
def test_cached_logits_match_one_forward(name):
  """The prompt at once, then token by token through the cache: the logits of one forward."""
  model, params = tiny(name)
  prompts_NxP, answers_NxA = examples()
  seqs_NxT = jnp.concatenate([prompts_NxP, answers_NxA], axis=1)
  (N, T), P = seqs_NxT.shape, prompts_NxP.shape[1]
  apply = jax.jit(lambda idx_NxT, cache: model.apply({'params': params}, idx_NxT, cache=cache))
  logits, aux = apply(seqs_NxT[:, :P], decoding.init_cache(model, N, T))
  chunks = [logits]
  for t in range(P, T):
    logits, aux = apply(seqs_NxT[:, t:t + 1], aux['cache'])
    chunks.append(logits)
  expected_NxTxV = model.apply({'params': params}, seqs_NxT)[0]
  np.testing.assert_allclose(jnp.concatenate(chunks, axis=1), expected_NxTxV, atol=1e-5, rtol=1e-5)
  assert int(aux['cache'].index) == T
