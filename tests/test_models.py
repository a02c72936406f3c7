"""Fidelity, causality, compute accounting and gradient rules of the seven rungs."""

import dataclasses
import os
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import model_and_params, small_config

from artrm.models import (
  RUNGS,
  ModelConfig,
  block_passes,
  build_model,
  load_neutral,
  normalize_budget,
)
from artrm.models import block as block_lib
from artrm.models.streams import PassContext, Streams, dual_step
from artrm.training.train_step import lm_loss

GOLDEN_DIR = pathlib.Path(
  os.environ.get(
    'ARTRM_GOLDEN_DIR', pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'golden'
  )
)
GOLDEN_CASES = sorted(p.name for p in GOLDEN_DIR.glob('*.npz'))


def init(cfg, T=10, seed=0):
  """The model of `cfg`, its params and a batch of 2 random rows of T tokens."""
  idx = jax.random.randint(jax.random.key(seed + 1), (2, T), 0, cfg.vocab_size)
  return *model_and_params(cfg, seed=seed), idx


def test_golden_folder_present():
  if not GOLDEN_DIR.is_dir():
    if os.environ.get('CI'):
      pytest.fail(f'CI must run the golden cases but {GOLDEN_DIR} is missing.')
    pytest.skip(
      f'golden vectors not found at {GOLDEN_DIR} (set ARTRM_GOLDEN_DIR); '
      'they ship beside the repo, not with it.'
    )
  assert len(GOLDEN_CASES) == 19, GOLDEN_CASES


@pytest.mark.parametrize('use_jit', [True, False], ids=['jit', 'nojit'])
@pytest.mark.parametrize('case', GOLDEN_CASES)
def test_golden(case, use_jit):
  model, params, ref = load_neutral(GOLDEN_DIR / case)
  steps = int(ref['config/inference_steps'])
  kwargs = dict(
    inference_steps=None if steps < 0 else steps, full_compute=bool(ref['config/full_compute'])
  )
  fwd = lambda p, idx: model.apply({'params': p}, idx, **kwargs)
  if use_jit:
    fwd = jax.jit(fwd)
  logits, aux = fwd(params, jnp.asarray(ref['idx']))
  scale = np.abs(ref['logits']).max()
  err = np.abs(np.asarray(logits) - ref['logits']).max() / scale
  assert err <= 1e-4, (
    f'{case}: logits differ from the paper code by {err:.2e} of the logit scale. The '
    'rung no longer computes what the paper computes: check LayerNorm eps/variance, '
    'exact GELU, the order of stream sums, step-embedding clamping and halting.'
  )
  loss = lm_loss(model.config, logits, aux, jnp.asarray(ref['targets']))
  np.testing.assert_allclose(
    loss, ref['loss'], rtol=1e-5, err_msg=f'{case}: loss (CE + ponder) drifted'
  )
  if 'ponder_cost' in ref:
    np.testing.assert_allclose(
      aux['ponder_cost'],
      ref['ponder_cost'],
      rtol=1e-5,
      err_msg=f'{case}: ACT ponder cost (mean n + r) drifted',
    )
  if 'steps_taken' in ref:
    assert int(aux['steps_taken']) == int(ref['steps_taken']), (
      f'{case}: TRM ran {int(aux["steps_taken"])} steps, the paper code '
      f'{int(ref["steps_taken"])}: batch-level Q-halting changed.'
    )


@pytest.mark.parametrize('name', list(RUNGS))
def test_causal(name):
  cfg = small_config(name)
  model, params, idx = init(cfg, T=12)
  t = 5
  other = idx.at[:, t + 1 :].set((idx[:, t + 1 :] + 3) % cfg.vocab_size)
  a, _ = model.apply({'params': params}, idx)
  b, _ = model.apply({'params': params}, other)
  chex.assert_trees_all_close(a[:, : t + 1], b[:, : t + 1], atol=1e-6)
  assert not np.allclose(a[:, t + 1 :], b[:, t + 1 :]), 'later logits should see the change'


class CountingBlock(block_lib.Block):
  """Counts executed block applications at run time, independently of the model's counter.

  A pure callback whose result feeds the block's output: dead code (e.g. a
  shape probe that Flax's lifted scan traces once) is eliminated with it, so
  only block passes that run on the device are counted.
  """

  calls = [0]

  def __call__(self, x, deterministic=True, slot=None, rng=None, rope_BxT=None):
    def count(x):
      CountingBlock.calls[0] += 1
      return np.zeros((), np.float32)

    tick = jax.pure_callback(count, jax.ShapeDtypeStruct((), jnp.float32), x)
    out, slot = super().__call__(x, deterministic, slot, rng, rope_BxT)
    return out + tick, slot


PASS_CASES = [(name, b, (2, 2)) for name in RUNGS for b in (6, 12)] + [
  (name, b, hl) for name in ('ut_level2', 'trm') for b, hl in ((24, (3, 1)), (12, (1, 2)))
]


@pytest.mark.parametrize('name,budget,start', PASS_CASES)
def test_block_passes_executed(name, budget, start, monkeypatch):
  monkeypatch.setattr(block_lib, 'Block', CountingBlock)
  cfg = normalize_budget(small_config(name, n_outer_loops=start[0], n_inner_loops=start[1]), budget)
  model, params, idx = init(cfg, T=6)
  jax.effects_barrier()  # let init's callbacks land before counting
  CountingBlock.calls[0] = 0
  _, aux = model.apply({'params': params}, idx, full_compute=True)
  jax.effects_barrier()
  expected = block_passes(cfg)
  assert CountingBlock.calls[0] == expected == int(aux['block_passes'])
  assert expected <= budget


def test_early_stop_skips_block_work(monkeypatch):
  """ACT / TRM skip the steps after everything halted: fewer passes.

  For ACT the output is that of running every step (halted positions add
  nothing); for TRM the readout is y after the last executed step, so full
  compute changes it, as in the paper's code.
  """
  monkeypatch.setattr(block_lib, 'Block', CountingBlock)
  for name, head in [('ut', 'act_halt'), ('trm', 'q_halt')]:
    model, params, idx = init(small_config(name, n_layer=4))
    params = jax.tree.map(lambda x: x, params)
    params[head]['bias'] = jnp.array([30.0])  # sigmoid rounds to 1: halt at step one
    jax.effects_barrier()
    CountingBlock.calls[0] = 0
    logits, aux = model.apply({'params': params}, idx)
    jax.effects_barrier()
    per_step = block_passes(model.config) // model.config.n_layer
    assert CountingBlock.calls[0] == int(aux['block_passes']) == per_step, name
    assert int(aux['steps_taken']) == 1
    full_logits, _ = model.apply({'params': params}, idx, full_compute=True)
    if name == 'ut':
      chex.assert_trees_all_close(logits, full_logits, rtol=1e-6, atol=1e-6)
    else:
      assert not np.allclose(logits, full_logits)


NESTED_TABLE = {
  # (H0, L0): {budget: (n_layer, H, L)}
  (2, 2): {6: (1, 2, 2), 8: (2, 2, 1), 12: (2, 2, 2), 24: (4, 2, 2), 48: (8, 2, 2)},
  (1, 2): {6: (2, 1, 2), 12: (4, 1, 2), 24: (8, 1, 2), 48: (16, 1, 2)},
  (3, 3): {6: (1, 2, 2), 12: (1, 3, 3), 24: (2, 3, 3), 48: (4, 3, 3)},
  (2, 4): {6: (1, 2, 2), 12: (3, 1, 3), 24: (3, 2, 3), 48: (6, 2, 3)},
}


@pytest.mark.parametrize('budget', [6, 12, 24, 48])
def test_normalize_budget_table(budget):
  for name in ['gpt', 'gpt_level1', 'gpt_level2', 'ut']:
    assert normalize_budget(ModelConfig(name=name), budget).n_layer == budget
  assert normalize_budget(ModelConfig(name='ut_level1'), budget).n_layer == budget // 2
  for name in ['ut_level2', 'trm']:
    for (H0, L0), table in NESTED_TABLE.items():
      if budget in table:
        c = normalize_budget(ModelConfig(name=name, n_outer_loops=H0, n_inner_loops=L0), budget)
        assert (c.n_layer, c.n_outer_loops, c.n_inner_loops) == table[budget], (H0, L0)
        assert block_passes(c) == budget


def test_normalize_budget_spec_example_and_errors():
  c = normalize_budget(ModelConfig(name='trm'), 8)
  assert (c.n_layer, c.n_outer_loops, c.n_inner_loops) == (2, 2, 1)
  with pytest.raises(ValueError, match='positive'):
    normalize_budget(ModelConfig(name='gpt'), 0)
  with pytest.raises(ValueError, match='Raise the budget'):
    normalize_budget(ModelConfig(name='ut_level1'), 1)
  with pytest.raises(ValueError, match='Unknown model'):
    normalize_budget(ModelConfig(name='transformer'), 8)
  with pytest.raises(ValueError, match='max_act_steps=4 is set'):
    normalize_budget(ModelConfig(name='ut', max_act_steps=4), 24)


def test_bad_configs_have_clear_errors():
  with pytest.raises(ValueError, match='not divisible by n_head'):
    init(small_config('gpt', n_head=5))
  model, params, idx = init(small_config('gpt'))
  with pytest.raises(ValueError, match='exceeds block_size'):
    model.apply({'params': params}, jnp.zeros((1, 17), jnp.int32))
  with pytest.raises(ValueError, match='distinct blocks'):
    model.apply({'params': params}, idx, inference_steps=5)
  with pytest.raises(ValueError, match='Unknown model config keys'):
    build_model({'name': 'gpt', 'n_layers': 3})
  with pytest.raises(ValueError, match=r"Unknown model.remat 'all'; choose one of"):
    init(small_config('ut', remat='all'))


def _grads(cfg, seed=0):
  model, params, idx = init(cfg, T=8, seed=seed)
  targets = jnp.roll(idx, -1, axis=1)

  def loss_fn(p):
    logits, aux = model.apply({'params': p}, idx)
    return lm_loss(cfg, logits, aux, targets)

  return jax.jit(jax.grad(loss_fn))(params)


@pytest.mark.parametrize('name', ['ut_level2', 'trm'])
def test_gradient_rules_nested(name):
  g = _grads(small_config(name, n_outer_loops=2, n_inner_loops=2))
  zero = lambda x: float(jnp.abs(x).max()) == 0.0
  assert zero(g['y_init']) and zero(g['z_init']), 'carried y/z are detached: no gradient'
  assert not zero(g['tok_emb']['embedding']) and not zero(g['pos_emb']), 'x must get gradient'
  assert not zero(g['block']['mlp']['fc1']['kernel'])
  if name == 'trm':
    assert zero(g['q_halt']['kernel']) and zero(g['q_halt']['bias']), 'Q-head has no loss'


def test_dual_ut_gradients_reach_inits():
  """Rung 5 has no detaching: y_init / z_init learn (contrast with rungs 6-7)."""
  g = _grads(small_config('ut_level1'))
  assert float(jnp.abs(g['y_init']).max()) > 0 and float(jnp.abs(g['z_init']).max()) > 0


@pytest.mark.parametrize('name', ['ut_level2', 'trm'])
def test_first_cycles_carry_no_gradient(name):
  """The H-cycle step's gradient equals that of its last cycle run from constants."""
  cfg2 = small_config(name, n_outer_loops=2, n_inner_loops=2, n_layer=1)
  cfg1 = dataclasses.replace(cfg2, n_outer_loops=1)
  model2, params, idx = init(cfg2)
  model1 = build_model(cfg1)
  x = jax.random.normal(jax.random.key(3), (2, 8, 32))
  y0, z0 = jax.random.normal(jax.random.key(4), (2, 2, 8, 32))

  def step(model, p, y, z):
    (y, z), _ = model.apply(
      {'params': p},
      x,
      Streams(y, z),
      0.0,
      PassContext(jnp.zeros((), jnp.int32)),
      True,
      0,
      1,
      method=dual_step,
    )
    return y, z

  y1, z1 = step(model1, params, y0, z0)  # the first cycle, as constants
  loss2 = lambda p: jnp.sum(step(model2, p, y0, z0)[0] ** 2)
  loss1 = lambda p: jnp.sum(step(model1, p, y1, z1)[0] ** 2)
  (l2, g2), (l1, g1) = (jax.jit(jax.value_and_grad(f))(params) for f in (loss2, loss1))
  chex.assert_trees_all_close(l2, l1, rtol=1e-5)
  chex.assert_trees_all_close(g2, g1, rtol=1e-4, atol=1e-6)
  # and the carry entering a step gets none:
  gy = jax.jit(jax.grad(lambda y: jnp.sum(step(model2, params, y, z0)[0] ** 2)))(y0)
  assert float(jnp.abs(gy).max()) == 0.0


# Remat wraps the block in two places: distinct blocks (gpt's scan) and the tied block
# (ut: one stream with ACT; trm: two streams, nested loops, halting exploration).
@pytest.mark.parametrize('name', ['gpt', 'ut', 'trm'])
def test_remat_keeps_loss_and_gradients(name):
  """model.remat changes what the backward pass stores, never the numbers (dropout on)."""
  cfg = small_config(name, dropout=0.2, n_inner_loops=2, halt_exploration_prob=0.5)
  model, params, idx = init(cfg, T=8)

  def value_and_grad(cfg):
    def loss_fn(p):
      logits, aux = build_model(cfg).apply(
        {'params': p}, idx, deterministic=False, rngs={'dropout': jax.random.key(7)}
      )
      return lm_loss(cfg, logits, aux, jnp.roll(idx, -1, axis=1))

    traced = jax.jit(jax.value_and_grad(loss_fn)).trace(params)
    assert ('remat2[' in str(traced.jaxpr)) == (cfg.remat != 'none')
    return traced.lower().compile()(params)

  l0, g0 = value_and_grad(cfg)
  for remat in ('full', 'dots'):
    l1, g1 = value_and_grad(dataclasses.replace(cfg, remat=remat))
    chex.assert_trees_all_close(l1, l0, rtol=1e-6)
    chex.assert_trees_all_close(g1, g0, rtol=1e-5, atol=1e-7)
    assert float(jnp.abs(g1['lm_head']['kernel']).max()) > 0


@pytest.mark.parametrize(
  'name', ['gpt', 'ut_level1', 'trm']
)  # distinct, scanned, nested + exploration
def test_dropout_uses_explicit_keys(name):
  model, params, idx = init(small_config(name, dropout=0.3))
  run = jax.jit(
    lambda key: model.apply({'params': params}, idx, deterministic=False, rngs={'dropout': key})[0]
  )
  chex.assert_trees_all_equal(run(jax.random.key(1)), run(jax.random.key(1)))
  assert not np.allclose(run(jax.random.key(1)), run(jax.random.key(2)))


@pytest.mark.parametrize('name', list(RUNGS))
def test_program_size_independent_of_steps(name):
  """Every loop is a scan: the traced program does not grow with steps or cycles."""

  def n_eqns(n_layer, H):
    cfg = small_config(name, n_layer=n_layer, n_outer_loops=H, n_inner_loops=2)
    model = build_model(cfg)
    idx = jnp.zeros((1, 8), jnp.int32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), idx))['params']
    jaxpr = jax.make_jaxpr(lambda p: model.apply(p, idx))({'params': params})
    return len(str(jaxpr).splitlines())

  assert n_eqns(2, 2) == n_eqns(6, 2)
  if name in ('ut_level2', 'trm'):
    assert n_eqns(2, 3) == n_eqns(2, 6)
