"""The TRM recipe's ingredients: each switch on and off, where gradient reaches, compute."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tiny import model_and_params, small_config

from artrm import workdir
from artrm.configs import length_gen
from artrm.data import sample_batch
from artrm.evaluation import decoding
from artrm.models import build_model, rungs, streams
from artrm.models.recipe import Recipe, backward_passes, compute_record, grad_passes
from artrm.training import train, train_state, train_step


def small(name='trm', **kw):
  """`small_config` at width 16 and 2 layers, with no exploration: each run halts alike."""
  return small_config(name, n_embd=16, n_head=2, n_layer=2, halt_exploration_prob=0.0, **kw)


@pytest.mark.parametrize(
  'name,recipe,match',
  [
    ('gpt', dict(n_sup=2), 'deep supervision carries'),
    ('ut', dict(halt_loss_weight=1.0), 'has no Q-head'),
    ('ut_level1', dict(grad_reach='all'), 'detaches nothing'),
    ('ut_level2', dict(grad_reach='last_k', grad_last_k=2), 'reads every step through ACT'),
    ('trm', dict(grad_reach='last_k'), 'grad_last_k > 0'),
    ('trm', dict(grad_reach='some'), 'choose one of'),
    ('gpt_level1', dict(fixed_init=True), 'has no y0 / z0'),
    ('ut', dict(carry_norm=True), 'has no y / z streams'),
    ('gpt', dict(input_norm=True), 'has no y / z streams'),
    ('gpt', dict(input_scale=8.0), 'has no y / z streams'),
    ('trm', dict(input_scale=8.0, input_norm=True), 'keep one of them'),
    ('trm', dict(embed_init_std=0.0), 'embed_init_std > 0'),
    ('trm', dict(act_halt_bias=-3.0), 'has no ACT head'),
    ('trm', dict(mixer='conv'), 'choose one of'),
    ('trm', dict(n_supervision=2), 'Unknown recipe keys'),
  ],
)
def test_contradictory_recipes_are_refused(name, recipe, match):
  with pytest.raises(ValueError, match=match):
    build_model(small(name), recipe)


def test_default_recipe_is_the_paper():
  """The paper's config has a recipe section whose values change nothing."""
  c = length_gen.get_config('model=trm,runlocal')
  assert Recipe.of_config(c) == Recipe()
  c.recipe = None  # configs saved before the recipe existed
  assert Recipe.of_config(c) == Recipe()


# -- gradient reach, by pass ---------------------------------------------------------


def passes_with_gradient(monkeypatch, model, params, idx, targets):
  """(indices of the block passes whose output gets a nonzero cotangent, how many passes
  the backward pass runs, the gradients)."""
  hit = {}

  @jax.custom_vjp
  def probe(x, n):
    return x

  def bwd(n, ct):
    jax.debug.callback(
      lambda n, g: hit.__setitem__(int(n), hit.get(int(n), False) or bool(g)), n, jnp.any(ct != 0)
    )
    return ct, np.zeros(np.shape(n), jax.dtypes.float0)

  probe.defvjp(lambda x, n: (x, n), bwd)
  apply_block = streams.apply_block

  def probed(block, h, ctx, deterministic):
    out, after = apply_block(block, h, ctx, deterministic)
    return probe(out, ctx.count), after

  monkeypatch.setattr(streams, 'apply_block', probed)

  def loss(p):
    logits, aux = model.apply(
      {'params': p}, idx, deterministic=False, rngs={'dropout': jax.random.key(0)}, sup_passes=1
    )
    return train_step.objective(model, logits, aux, targets)

  grads = jax.jit(jax.grad(loss))(params)
  jax.effects_barrier()
  return sorted(n for n, g in hit.items() if g), len(hit), grads


# trm, 2 steps of H=2 cycles of (L=1 + 1) passes: passes 0..7, steps [0-3] [4-7].
REACH_CASES = [
  ('trm', dict(), [6, 7]),  # last cycle of the last step
  ('trm', dict(grad_reach='last_step'), [4, 5, 6, 7]),
  ('trm', dict(grad_reach='all'), list(range(8))),
  ('trm', dict(grad_reach='last_k', grad_last_k=3), [5, 6, 7]),
  ('trm', dict(halt_loss_weight=1.0), [2, 3, 6, 7]),  # every step's q reads its state
  ('ut_level2', dict(), [2, 3, 6, 7]),  # ACT reads every step
  ('ut_level2', dict(grad_reach='last_step'), list(range(8))),
  ('ut_level1', dict(), list(range(4))),  # H = L = 1, no detaching
]


@pytest.mark.parametrize('name,recipe,expected', REACH_CASES)
def test_gradient_reach_by_pass(monkeypatch, name, recipe, expected):
  cfg = small(name, max_act_steps=2 if name != 'trm' else 0)
  recipe = Recipe(**recipe)
  model, params = model_and_params(cfg, recipe)
  if recipe.trains_halting:  # TRM's zero-initialised head passes no gradient on at init
    params['q_halt']['kernel'] = jnp.full_like(params['q_halt']['kernel'], 0.1)
  idx = jax.random.randint(jax.random.key(1), (2, 8), 0, 14)
  got, ran, grads = passes_with_gradient(monkeypatch, model, params, idx, jnp.roll(idx, -1, axis=1))
  assert got == expected
  assert grad_passes(model.rung, cfg, recipe) == len(expected), 'compute.md formula'
  assert backward_passes(model.rung, cfg, recipe) == ran, 'compute.md formula'
  zero = lambda x: float(jnp.abs(x).max()) == 0.0
  if name == 'trm':  # the inits get gradient only when nothing cuts them off
    assert zero(grads['y_init']) == (expected[0] > 0)
    assert zero(grads['q_halt']['kernel']) == (not recipe.trains_halting)


def test_trm_differentiates_only_its_last_step(monkeypatch):
  """Training trm runs the steps before the last outside the differentiated program:
  loss, steps and gradients equal one scan's over every step, dropout on, also when
  the batch halts early (the halting step runs again, with its passes' dropout keys)."""
  cfg = dataclasses.replace(small('trm'), n_layer=3, dropout=0.1, halt_exploration_prob=0.0)
  model, params = model_and_params(cfg)
  halting = dict(params, q_halt={**params['q_halt'], 'bias': jnp.array([30.0])})  # q > 0 at once
  idx = jax.random.randint(jax.random.key(1), (2, 8), 0, 14)

  def loss(p):
    logits, aux = model.apply(
      {'params': p}, idx, deterministic=False, rngs={'dropout': jax.random.key(5)}
    )
    return train_step.objective(model, logits, aux, jnp.roll(idx, -1, axis=1)), aux['steps_taken']

  split = jax.jit(jax.value_and_grad(loss, has_aux=True))
  split_out = [split(p) for p in (params, halting)]
  monkeypatch.setattr(rungs.RecursiveLM, 'steps_cut_apart', property(lambda self: False))
  whole = jax.jit(jax.value_and_grad(loss, has_aux=True))
  for p, out, steps in zip((params, halting), split_out, (3, 1)):
    chex.assert_trees_all_close(out, whole(p), rtol=1e-6, atol=1e-8)
    assert int(out[0][1]) == steps
    assert float(jnp.abs(out[1]['block']['mlp']['fc1']['kernel']).max()) > 0


def test_paper_reach_is_the_two_scan_program():
  """grad_reach=paper keeps the paper's program: the step start and last cycle cut
  statically, so the earlier cycles are not differentiated at all."""
  _, params = model_and_params(small('trm'))
  idx = jnp.zeros((1, 8), jnp.int32)
  n_scans = lambda r: str(
    jax.make_jaxpr(lambda p: build_model(small('trm'), r).apply({'params': p}, idx)[0])(params)
  ).count('scan[')
  assert n_scans(Recipe()) == n_scans(Recipe(grad_reach='last_step')) + 1


# -- deep supervision -----------------------------------------------------------------


def one_batch(
  model, state, optimizer, n_sup, update, task='copy', length=3, batch=4, keep_carry=True
):
  """train_step's batch by hand: the reference it must equal (with `keep_carry=False`,
  every pass starts from y0 / z0)."""
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  data_key, dropout_key = jax.random.split(key)
  b = sample_batch(data_key, task, length, batch)
  keys = jax.random.split(dropout_key, n_sup)
  params, opt_state, carry, total = state.params, state.opt_state, None, None

  def loss(p, key, carry):
    logits, aux = model.apply(
      {'params': p},
      b['inputs'],
      deterministic=False,
      rngs={'dropout': key},
      carry=carry,
      sup_passes=1,
    )
    return train_step.objective(model, logits, aux, b['targets']), aux['carry']

  # Jitted (one program with the carry, one without; one update) rather than op by op:
  # the same arithmetic, in a fraction of the time.
  grad = jax.jit(jax.value_and_grad(loss, has_aux=True))

  @jax.jit
  def apply(g, opt_state, params):
    u, opt_state = optimizer.update(g, opt_state, params)
    return optax.apply_updates(params, u), opt_state

  for i in range(n_sup):
    (_, new_carry), g = grad(params, keys[i], carry)
    carry = jax.lax.stop_gradient(new_carry) if keep_carry else None
    if update == 'each':
      params, opt_state = apply(g, opt_state, params)
    else:
      total = g if total is None else jax.tree.map(jnp.add, total, g)
  if update == 'accumulate':
    params, opt_state = apply(total, opt_state, params)
  return params, opt_state


@pytest.mark.parametrize('update', ['each', 'accumulate'])
def test_deep_supervision_steps_and_carry(update):
  cfg = small('trm', dropout=0.1)
  recipe = Recipe(n_sup=3, sup_update=update)
  model = build_model(cfg, recipe)
  optimizer = optax.adamw(1e-2)
  state = train_state.init_state(model, optimizer, seed=0)
  step = jax.jit(
    lambda s: train_step.train_step(
      s, model=model, optimizer=optimizer, tasks=('copy',), task_index=0, length=3, batch_size=4
    )
  )
  new_state, metrics = step(state)
  assert int(new_state.step) == 1, 'one batch, one step'
  count = new_state.opt_state[0].count
  assert int(count) == (3 if update == 'each' else 1), 'optimizer steps per batch'
  params, _ = one_batch(model, state, optimizer, 3, update)
  chex.assert_trees_all_close(new_state.params, params, rtol=1e-5, atol=1e-6)
  assert {'loss', 'loss_last_pass', 'grad_norm', 'block_passes'} <= set(metrics)
  if update == 'accumulate':
    return  # the carry is the same in both

  # Dropping the carry (each pass from y0 / z0) is a different computation.
  dropped, _ = one_batch(model, state, optimizer, 3, update, keep_carry=False)
  assert not np.allclose(jax.tree.leaves(dropped)[0], jax.tree.leaves(new_state.params)[0])


def test_deep_supervision_decodes_every_pass_with_the_cache():
  """Evaluation runs the n_sup passes per token; cached = full recompute."""
  model, params = model_and_params(small('trm'), Recipe(n_sup=2))
  prompts = jax.random.randint(jax.random.key(2), (3, 5), 0, 10)
  full = decoding.generate(model, params, prompts, 4)
  cached = decoding.generate_cached(model, params, prompts, 4)
  chex.assert_trees_all_equal(full, cached)
  _, aux = model.apply({'params': params}, prompts)
  assert int(aux['block_passes']) == model.passes_per_forward() == 2 * 8


# -- halting, EMA, fixed inits, mixer, ACT bias ------------------------------------------


def train_steps(model, steps, seed=0, lr=3e-3, task='copy', length=3, batch=16):
  opt = length_gen.base_config().optimizer
  opt.learning_rate = lr
  optimizer = train_state.make_optimizer(opt, model.recipe)
  state = train_state.init_state(model, optimizer, seed)
  step = jax.jit(
    lambda s: train_step.train_step(
      s,
      model=model,
      optimizer=optimizer,
      tasks=(task,),
      task_index=0,
      length=length,
      batch_size=batch,
    )
  )
  history = []
  for _ in range(steps):
    state, m = step(state)
    history.append(m)
  return state, history


def test_q_head_learns_when_to_halt():
  """With the halting loss the Q-head predicts its step's correctness far better than
  the paper's untrained head (q = -5 throughout) does after the same training."""
  model = build_model(small('trm'), Recipe(halt_loss_weight=1.0))
  batch = sample_batch(jax.random.key(9), 'copy', 3, 64)

  @jax.jit
  def halt_bce(params):
    _, aux = model.apply({'params': params}, batch['inputs'])
    return train_step.halt_loss(aux['halt'], batch['targets'], 'token')

  trained, _ = train_steps(model, 60)
  paper, _ = train_steps(build_model(small('trm')), 60)
  chex.assert_trees_all_close(paper.params['q_halt']['bias'], jnp.full((1,), -5.0), atol=0.05)
  assert float(halt_bce(trained.params)) < 0.75 * float(halt_bce(paper.params))  # measured 0.53


def test_trained_halting_stops_per_position():
  """A position's output is read at its first step with q > 0; cached = full recompute."""
  model, params = model_and_params(small('trm'), Recipe(halt_loss_weight=1.0))
  params['q_halt']['bias'] = jnp.full((1,), 5.0)  # every position halts after step 1
  idx = jax.random.randint(jax.random.key(3), (2, 8), 0, 14)
  early, aux = model.apply({'params': params}, idx)
  assert float(aux['steps_taken']) == 1.0
  one_step = model.apply({'params': params}, idx, inference_steps=1)[0]
  chex.assert_trees_all_close(early, one_step, atol=1e-6)
  prompts = idx[:, :5]
  chex.assert_trees_all_equal(
    decoding.generate(model, params, prompts, 3),
    decoding.generate_cached(model, params, prompts, 3),
  )


def test_ema_arithmetic():
  model = build_model(small('trm'), Recipe(ema_decay=0.9))
  state0, _ = train_steps(model, 0)
  state, _ = train_steps(model, 1)
  expected = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, state0.params, state.params)
  chex.assert_trees_all_close(state.ema_params, expected, rtol=1e-6)
  assert train_state.eval_params(state) is state.ema_params
  assert train_state.eval_params(state0.replace(ema_params=None)) is state0.params


def test_fixed_inits_never_change():
  model = build_model(small('trm'), Recipe(fixed_init=True))
  state0, _ = train_steps(model, 0)
  state, _ = train_steps(model, 3)
  for name in ('y_init', 'z_init'):
    chex.assert_trees_all_equal(state.params[name], state0.params[name])
    assert 0.5 < float(jnp.std(state0.params[name])) < 1.5, 'std-1 draws'
  assert not np.allclose(state.params['lm_head']['kernel'], state0.params['lm_head']['kernel'])


def test_carry_norm_keeps_the_streams_at_unit_rms():
  """The pre-norm streams grow with every pass; normalised, y and z stay at RMS 1,
  and cached decoding still equals full recompute."""
  idx = jax.random.randint(jax.random.key(5), (2, 6), 0, 14)
  rms = lambda a: jnp.sqrt(jnp.mean(jnp.square(a), -1))
  grown = []
  for recipe in (Recipe(), Recipe(carry_norm=True)):
    model, params = model_and_params(small('trm'), recipe)
    _, aux = model.apply({'params': params}, idx, inference_steps=6, full_compute=True)
    grown.append(max(float(jnp.max(rms(s))) for s in aux['carry']))
  assert grown[0] > 10 and abs(grown[1] - 1) < 1e-3, grown
  model, params = model_and_params(small('trm'), Recipe(carry_norm=True, input_norm=True))
  full = decoding.generate(model, params, idx[:, :4], 3)
  chex.assert_trees_all_equal(full, decoding.generate_cached(model, params, idx[:, :4], 3))


def test_input_norm_makes_the_input_scale_free():
  """x enters at unit RMS: scaling both embedding tables leaves the output as it was."""
  idx = jax.random.randint(jax.random.key(6), (2, 6), 0, 14)
  for recipe, same in ((Recipe(), False), (Recipe(input_norm=True), True)):
    model, params = model_and_params(small('trm'), recipe)
    scaled = {**params, 'pos_emb': 30 * params['pos_emb']}
    scaled['tok_emb'] = {'embedding': 30 * params['tok_emb']['embedding']}
    a, _ = model.apply({'params': params}, idx)
    b, _ = model.apply({'params': scaled}, idx)
    assert np.allclose(a, b, atol=1e-4) == same


def test_input_scale_and_embedding_init():
  """input_scale multiplies x (no normalising); embed_init_std sets the tables' std."""
  idx = jax.random.randint(jax.random.key(6), (2, 6), 0, 14)
  model, params = model_and_params(small('trm'))
  scaled, _ = model_and_params(small('trm'), Recipe(input_scale=8.0))
  x = model.apply({'params': params}, idx, method='embed')
  chex.assert_trees_all_close(scaled.apply({'params': params}, idx, method='embed'), 8.0 * x)
  _, wide = model_and_params(small('trm'), Recipe(embed_init_std=1.0))
  for p, std in ((params, 0.02), (wide, 1.0)):
    assert 0.7 * std < float(jnp.std(p['pos_emb'])) < 1.3 * std


def test_mlp_mixer_is_causal_and_refuses_the_cache():
  model, params = model_and_params(small('trm'), Recipe(mixer='mlp'))
  assert 'mix' in params['block'] and 'attn' not in params['block']
  idx = jax.random.randint(jax.random.key(4), (2, 10), 0, 14)
  t = 5
  other = idx.at[:, t].set((idx[:, t] + 1) % 14)
  a, _ = model.apply({'params': params}, idx)
  b, _ = model.apply({'params': params}, other)
  chex.assert_trees_all_close(a[:, :t], b[:, :t], atol=1e-6)
  assert not np.allclose(a[:, t:], b[:, t:])
  decoding.generate(model, params, idx[:, :4], 3)  # full recompute decodes
  with pytest.raises(ValueError, match='kv_cache=False'):
    decoding.generate_cached(model, params, idx[:, :4], 3)


def test_act_halt_bias_init():
  _, params = model_and_params(small('ut_level2', max_act_steps=2), Recipe(act_halt_bias=-3.0))
  chex.assert_trees_all_equal(params['act_halt']['bias'], jnp.full((1,), -3.0))
  _, paper = model_and_params(small('ut_level2', max_act_steps=2))
  chex.assert_trees_all_equal(paper['act_halt']['bias'], jnp.zeros((1,)))


# -- compute accounting ---------------------------------------------------------------


def test_compute_record():
  cfg = small('trm')  # 2 steps x 2 cycles x 2 passes
  assert compute_record(build_model(cfg).rung, cfg, Recipe()) == dict(
    forward_passes=8,
    grad_passes=2,
    backward_passes=2,  # the last step's last cycle: the first step is not differentiated
    n_sup=1,
    train_passes_per_token=10,
    inference_passes=8,
  )
  assert compute_record(build_model(cfg).rung, cfg, Recipe(n_sup=4, grad_reach='all')) == dict(
    forward_passes=8,
    grad_passes=8,
    backward_passes=8,
    n_sup=4,
    train_passes_per_token=64,
    inference_passes=32,
  )


# -- exact resume with every ingredient on ------------------------------------------------


def test_exact_resume_with_the_full_recipe(tmp_path):
  c = length_gen.get_config('model=trm,task=copy,runlocal')
  c.model.update(n_embd=16, n_head=2, dropout=0.1)
  c.update(train_length=3, batch_size=8, max_steps=4, budget=4)
  c.eval.update(every_steps=2, n_samples=8, batch_size=8, lengths=(3,), kv_cache=True)
  c.checkpoint.every_steps = 2
  c.log.update(every_steps=1, progress_bar=False)
  c.recipe.update(
    n_sup=2, halt_loss_weight=0.5, ema_decay=0.9, fixed_init=True, grad_reach='last_step'
  )
  straight = train.train_and_evaluate(c, str(tmp_path / 'straight'))
  half = c.copy_and_resolve_references()
  half.max_steps = 2
  train.train_and_evaluate(half, str(tmp_path / 'resumed'))
  resumed = train.train_and_evaluate(c, str(tmp_path / 'resumed'))
  chex.assert_trees_all_equal(resumed['state'], straight['state'])
  assert resumed['eval'] == straight['eval']
  (setup,) = workdir.read_metrics(str(tmp_path / 'straight'), 'setup')
  assert setup['n_sup'] == 2 and setup['inference_passes'] == 2 * setup['forward_passes']


def test_results_table_carries_recipe_and_compute():
  """trm at the paper's budget 24: 24 passes forward, 3 with gradient (the last cycle),
  and only those 3 run backward (the earlier steps are not differentiated)."""
  from artrm.tools import results

  c = length_gen.get_config('model=trm')
  assert results.run_compute(train.config_dict(c)) == dict(
    recipe='paper',
    forward_passes=24,
    grad_passes=3,
    backward_passes=3,
    train_passes_per_token=27,
    inference_passes=24,
  )
  c.recipe.update(n_sup=2, grad_reach='all')
  assert results.run_compute(train.config_dict(c)) == dict(
    recipe='grad_reach=all,n_sup=2',
    forward_passes=24,
    backward_passes=24,
    grad_passes=24,
    train_passes_per_token=96,
    inference_passes=48,
  )
  c.model.name = 'ut_level2'
  c.recipe.update(n_sup=1, grad_reach='paper')
  assert results.run_compute(train.config_dict(c))['grad_passes'] == 4 * 3
