"""The bfloat16 compute path: float32 params and logits, bf16 matmuls, close to float32, learns.

Tolerances are measured, with headroom: at n_embd 32 and 6 block passes the
bf16 logits differ from float32 by 0.4 % (ut) to 1.2 % (gpt) of the logit
scale (bf16 keeps 8 significant bits: 0.4 % per rounding); LOGIT_TOL allows 4 %.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from artrm import parallel
from artrm.configs import length_gen
from artrm.data import eval_set
from artrm.evaluation import decoding
from artrm.models import RUNGS, ModelConfig, build_model, init_params, normalize_budget
from artrm.training import builders, train_state, train_step

LOGIT_TOL = 0.04


def tiny(name, **overrides):
  cfg = normalize_budget(ModelConfig(name=name, n_embd=32, n_head=4, block_size=24, **overrides), 6)
  return build_model(cfg)


def tokens(T=20):
  return jax.random.randint(jax.random.key(1), (3, T), 0, 14)


@pytest.mark.parametrize('name', list(RUNGS))
def test_bf16_logits_close_to_f32(name):
  f32, bf16 = tiny(name), tiny(name, dtype='bfloat16')
  params = init_params(f32, jax.random.key(0))
  bf16_params = init_params(bf16, jax.random.key(0))
  chex_equal = jax.tree.map(
    lambda a, b: a.dtype == b.dtype == jnp.float32 and bool(jnp.all(a == b)), params, bf16_params
  )
  assert all(jax.tree.leaves(chex_equal)), 'params must be float32 and independent of model.dtype'
  idx = tokens()
  expected, expected_aux = jax.jit(lambda p: f32.apply({'params': p}, idx))(params)
  got, aux = jax.jit(lambda p: bf16.apply({'params': p}, idx))(params)
  assert got.dtype == jnp.float32
  err = float(jnp.max(jnp.abs(got - expected)) / jnp.max(jnp.abs(expected)))
  assert 0 < err <= LOGIT_TOL, f'{name}: bf16 logits off by {err:.3%} of the logit scale'
  assert int(aux['block_passes']) == int(expected_aux['block_passes'])


def dot_operand_types(model, params, idx):
  """(lhs, rhs, out) element types of every dot_general in the lowered forward."""
  text = jax.jit(lambda p: model.apply({'params': p}, idx)).lower(params).as_text()
  dots = re.findall(
    r'dot_general.*?: \(tensor<(?:\d+x)*(\w+)>, tensor<(?:\d+x)*(\w+)>\) -> '
    r'tensor<([^>]*)>',
    text,
  )
  assert dots, 'no matmul found in the lowered forward'
  return dots


@pytest.mark.parametrize('name', ['gpt', 'ut', 'trm'])
def test_bf16_matmuls_are_bf16_but_halting_heads(name):
  """Every matmul runs on bf16 operands except the halting heads' (one output feature)."""
  model = tiny(name, dtype='bfloat16')
  params = init_params(model, jax.random.key(0))
  f32_dots = [
    out
    for lhs, rhs, out in dot_operand_types(model, params, tokens())
    if (lhs, rhs) != ('bf16', 'bf16')
  ]
  assert all(out.endswith('x1xf32') for out in f32_dots), f32_dots
  assert (len(f32_dots) > 0) == (model.rung.halting != 'none')


def test_matmul_precision_reaches_the_matmuls():
  model = tiny('gpt', matmul_precision='float32')
  params = init_params(model, jax.random.key(0))
  text = jax.jit(lambda p: model.apply({'params': p}, tokens())).lower(params).as_text()
  default = jax.jit(lambda p: tiny('gpt').apply({'params': p}, tokens())).lower(params).as_text()
  assert 'HIGHEST' in text and 'HIGHEST' not in default


def test_bad_dtype_and_precision_are_refused():
  with pytest.raises(ValueError, match='model.dtype'):
    ModelConfig(dtype='float16')
  with pytest.raises(ValueError, match='model.matmul_precision'):
    ModelConfig(matmul_precision='highest')


def test_bf16_cache_follows_compute_dtype_and_decodes():
  model = tiny('trm', dtype='bfloat16')
  params = init_params(model, jax.random.key(0))
  prompts_NxP, answers_NxA = (jnp.asarray(a) for a in eval_set('addition', 3, 8, seed=0))
  A = answers_NxA.shape[1]
  assert decoding.init_cache(model, 2, 10).key_PxBxHxSxD.dtype == jnp.bfloat16
  expected_NxA = decoding.generate(model, params, prompts_NxP, A)
  got_NxA = decoding.generate_cached(model, params, prompts_NxP, A)
  np.testing.assert_array_equal(got_NxA, expected_NxA)
  with pytest.raises(ValueError, match='init_cache'):
    model.apply({'params': params}, prompts_NxP, cache=decoding.init_cache(tiny('trm'), 8, 12))


def train_losses(dtype, steps=60):
  c = length_gen.get_config('model=trm,task=copy,runlocal')
  c.model.update(n_embd=32, n_head=2, block_size=24, dtype=dtype)
  c.update(budget=4, train_length=3, batch_size=16)
  c.optimizer.learning_rate = 3e-3
  mesh = parallel.data_mesh()
  model = build_model(builders.model_config(c))
  optimizer = train_state.make_optimizer(c.optimizer)
  state = train_state.init_seeds(model, optimizer, train_state.seeds_of(c))
  step_fn, task = train_step.make_step_fn(c, model, optimizer, mesh), train_step.task_indices(c)
  losses = []
  for _ in range(steps):
    state, metrics = step_fn(state, task)
    losses.append(metrics['loss'][0])
  return np.asarray(jax.device_get(losses))


def test_bf16_training_learns_as_f32_does():
  """60 steps of trm on copy: both fall from 2.52 to 1.75 (measured), within 1e-3 of each other."""
  bf16, f32 = train_losses('bfloat16'), train_losses('float32')
  first, last = bf16[:5].mean(), bf16[-5:].mean()
  assert last < 0.75 * first, f'bf16 loss {first:.3f} -> {last:.3f}: did not fall clearly'
  assert abs(last - f32[-5:].mean()) < 0.05, (last, f32[-5:].mean())
