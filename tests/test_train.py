"""The training loop: learning, exact resume, data parallelism, configs, errors."""

import functools
import os

from absl import flags
import chex
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import pytest
from tiny import tiny_config

from artrm import one_off, parallel
from artrm import workdir as workdir_lib
from artrm.configs import length_gen
from artrm.models import build_model
from artrm.models.recipe import Recipe
from artrm.tools import ladder
from artrm.training import (
  builders,
  checkpointing,
  eval_checkpoint,
  train,
  train_state,
  train_step,
  writers,
)

CONFIG_FILE = os.path.join(os.path.dirname(__file__), '..', 'artrm', 'configs', 'length_gen.py')


def params_of(out):
  return jax.device_get(out['state'].params)


def test_learns_copy(tmp_path):
  """A real run: a tiny model learns copy to >= 0.99 exact-match accuracy."""
  c = tiny_config('gpt', max_steps=300)
  c.model.update(n_embd=64, n_head=4)
  c.optimizer.learning_rate = 3e-3
  c.eval.update(every_steps=300, n_samples=128, batch_size=128)
  # Saves cost more than steps; 50 steps between syncs on 2 CPU devices once aborted the
  # process (parallel.one_step_at_a_time).
  c.checkpoint.every_steps, c.log.every_steps = 300, 50
  out = train.train_and_evaluate(c, str(tmp_path))
  assert out['eval'][c.seed][3]['seq_acc'] >= 0.99, out['eval']
  records = workdir_lib.read_metrics(str(tmp_path), 'train')
  assert records[-1]['loss'] < records[0]['loss']
  assert {'loss', 'grad_norm', 'steps_per_sec', 'tokens_per_sec', 'block_passes'} <= set(records[0])


def test_resume_is_exact_and_finished_runs_are_not_retrained(tmp_path):
  """N straight == N/2, stop, re-run the same command to N: bitwise-equal params.

  trm with dropout: the dropout masks and TRM's halting exploration must replay too.
  """
  c = tiny_config('trm')
  c.model.dropout = 0.1
  straight = train.train_and_evaluate(c, str(tmp_path / 'straight'))
  half = tiny_config('trm', max_steps=4)
  half.model.dropout = 0.1
  train.train_and_evaluate(half, str(tmp_path / 'resumed'))
  resumed = train.train_and_evaluate(c, str(tmp_path / 'resumed'))
  chex.assert_trees_all_equal(params_of(straight), params_of(resumed))
  np.testing.assert_equal(resumed['eval'], straight['eval'])
  steps = [r['step'] for r in workdir_lib.read_metrics(str(tmp_path / 'resumed'), 'train')]
  assert steps == [2, 4, 6, 8], 'a resumed run logs each step once'
  again = train.train_and_evaluate(c, str(tmp_path / 'resumed'))  # finished: nothing re-run
  chex.assert_trees_all_equal(params_of(again), params_of(straight))
  np.testing.assert_equal(again['eval'], straight['eval'])
  assert [r['step'] for r in workdir_lib.read_metrics(str(tmp_path / 'resumed'), 'train')] == steps


def test_checkpoints_latest_periodic_best(tmp_path):
  c = tiny_config(max_steps=12)
  train.train_and_evaluate(c, str(tmp_path))
  ckpts = checkpointing.RunCheckpoints(str(tmp_path))
  assert ckpts.periodic.all_steps() == [4, 8, 12]
  best = ckpts.best_metrics()
  evals = workdir_lib.read_metrics(str(tmp_path), 'eval')
  assert best['value'] == max(r['L3/seq_acc'] for r in evals)
  ckpts.close()


def test_eval_reproduces_logged_metrics(tmp_path):
  c = tiny_config()
  train.train_and_evaluate(c, str(tmp_path))
  logged = workdir_lib.read_metrics(str(tmp_path), 'eval')[-1]
  results = eval_checkpoint.evaluate_checkpoint(str(tmp_path), 'latest')
  for k in ('seq_acc', 'char_acc', 'first_char_acc', 'last_char_acc'):
    assert results[c.seed][3][k] == logged[f'L3/{k}'], k


def test_other_config_in_same_workdir_is_refused(tmp_path):
  train.train_and_evaluate(tiny_config(), str(tmp_path))
  before = sorted(os.listdir(tmp_path / 'checkpoints'))
  other = tiny_config()
  other.model.n_embd = 48
  other.model.remat = 'dots'  # how gradients are computed may change; n_embd may not
  with pytest.raises(checkpointing.ConfigMismatchError, match=r'model.n_embd: 32 -> 48') as err:
    train.train_and_evaluate(other, str(tmp_path))
  assert 'remat' not in str(err.value)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == before


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  c = tiny_config(max_steps=8)
  train.train_and_evaluate(c, str(tmp_path))
  c.max_steps = 16
  monkeypatch.setattr(train_step, 'lm_loss', lambda *args: jnp.float32(jnp.nan))
  with pytest.raises(FloatingPointError, match='Non-finite loss or gradient at step 9'):
    train.train_and_evaluate(c, str(tmp_path))
  ckpts = checkpointing.RunCheckpoints(str(tmp_path))
  assert ckpts.periodic.all_steps() == [4, 8]
  ckpts.close()


def test_input_errors(tmp_path):
  c = tiny_config()
  c.model.block_size = 6
  with pytest.raises(ValueError, match='needs 7 positions but model.block_size=6'):
    train.train_and_evaluate(c, str(tmp_path))
  c = tiny_config()
  c.eval.lengths = (3, 20)
  with pytest.raises(ValueError, match='block_size'):
    train.train_and_evaluate(c, str(tmp_path))
  with pytest.raises(ValueError, match='Unknown model'):
    train.train_and_evaluate(tiny_config('transformer'), str(tmp_path))
  with pytest.raises(ValueError, match='does not split over 2 devices'):
    train.train_and_evaluate(tiny_config(batch_size=15), str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints' / '0')


def test_sharded_step_matches_single_device():
  """The batch split over 2 (fake CPU) devices gives the loss of 1 device."""
  assert len(jax.devices()) >= 2, 'tests/conftest.py fakes 2 CPU devices'
  c = tiny_config('gpt_level2')
  model = build_model(builders.model_config(c))
  optimizer = train_state.make_optimizer(c.optimizer)
  step = functools.partial(
    train_step.train_step,
    model=model,
    optimizer=optimizer,
    tasks=('copy',),
    task_index=0,
    length=3,
    batch_size=16,
  )
  losses = []
  for devices in (jax.devices()[:1], jax.devices()[:2]):
    mesh = parallel.data_mesh(devices)
    rep = parallel.replicated(mesh)
    state = jax.device_put(train_state.init_state(model, optimizer, 0), rep)
    fn = jax.jit(
      functools.partial(step, batch_sharding=parallel.batch_sharding(mesh)),
      in_shardings=(rep,),
      out_shardings=(rep, rep),
    )
    for _ in range(3):
      state, m = fn(state)
    losses.append(float(m['loss']))
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def test_several_cpu_devices_run_one_step_at_a_time():
  """The loop waits for each step on a CPU mesh of several devices, where queued steps
  can deadlock in XLA:CPU's all-reduce (test_learns_copy queues 50 on 2 devices)."""
  assert parallel.one_step_at_a_time(parallel.data_mesh(jax.devices()[:2]))
  assert not parallel.one_step_at_a_time(parallel.data_mesh(jax.devices()[:1]))


def test_train_step_compiled_and_eager_agree():
  """The step as one XLA program and op by op (jax.disable_jit: scans run as Python
  loops) give the same update: nothing in it depends on being traced."""
  c = tiny_config('gpt_level2')
  model = build_model(builders.model_config(c))
  optimizer = train_state.make_optimizer(c.optimizer)
  state = train_state.init_state(model, optimizer, 0)
  step = functools.partial(
    train_step.train_step,
    model=model,
    optimizer=optimizer,
    tasks=('copy', 'reverse'),
    task_index=1,
    length=3,
    batch_size=4,
  )
  compiled, m_compiled = jax.jit(step)(state)
  with jax.disable_jit():
    eager, m_eager = step(state)
  chex.assert_trees_all_close(eager, compiled, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(m_eager, m_compiled, rtol=1e-5, atol=1e-6)
  assert not np.allclose(eager.params['tok_emb']['embedding'], state.params['tok_emb']['embedding'])


def test_vmapped_seed_equals_seed_trained_alone(tmp_path):
  """Seeds in one program: seed 1338 of a 2-seed group == seed 1338 run by itself."""
  group = tiny_config('ut', num_seeds=2)  # ACT: its early stop becomes a select under vmap
  alone = tiny_config('ut', seed=group.seed + 1)
  out_group = train.train_and_evaluate(group, str(tmp_path / 'group'))
  out_alone = train.train_and_evaluate(alone, str(tmp_path / 'alone'))
  chex.assert_trees_all_close(
    train_state.seed_slice(params_of(out_group), 1),
    train_state.seed_slice(params_of(out_alone), 0),
    rtol=1e-5,
    atol=1e-6,
  )
  assert sorted(out_group['eval']) == [group.seed, group.seed + 1]
  seeds = {r['seed'] for r in workdir_lib.read_metrics(str(tmp_path / 'group'), 'train')}
  assert seeds == {group.seed, group.seed + 1}


def test_vmapped_seeds_keep_the_early_stop():
  """With seeds vmapped, ACT's skip stays a cond (decided over all seeds) instead of
  the select that vmap makes of a per-seed one, which runs every step."""
  c = tiny_config('ut', num_seeds=2)
  model = builders.run_model(c)
  optimizer = train_state.make_optimizer(c.optimizer, model.recipe)
  state = train_state.init_seeds(model, optimizer, train_state.seeds_of(c))
  step = train_step.make_step_fn(c, model, optimizer, parallel.data_mesh())
  assert 'cond[' in str(jax.make_jaxpr(step)(state, train_step.task_indices(c)))


def test_copy_and_reverse_runs_share_the_step_program():
  """The task is the step's argument: runs on copy and reverse compile one program (a suite's
  compilation cache serves the second), addition its own."""
  texts = {}
  for task in ('copy', 'reverse', 'addition'):
    c = tiny_config(task=task)
    model = builders.run_model(c)
    optimizer = train_state.make_optimizer(c.optimizer, model.recipe)
    state = train_state.init_seeds(model, optimizer, train_state.seeds_of(c))
    step = train_step.make_step_fn(c, model, optimizer, parallel.data_mesh())
    texts[task] = step.lower(state, train_step.task_indices(c)).as_text()
  assert texts['copy'] == texts['reverse'] != texts['addition']


def test_optimizer_is_torch_adamw():
  """One step from zero moments: p - lr * (g / (|g| + eps) + wd * p), as torch.optim.AdamW."""
  c = tiny_config()
  opt = train_state.make_optimizer(c.optimizer)
  p = {'w': jnp.array([1.0, -2.0])}
  g = {'w': jnp.array([0.5, 0.25])}
  updates, _ = opt.update(g, opt.init(p), p)
  lr, wd = 3e-4, 0.01
  expected = p['w'] - lr * (g['w'] / (jnp.abs(g['w']) + 1e-8) + wd * p['w'])
  np.testing.assert_allclose(p['w'] + updates['w'], expected, rtol=1e-6)


def test_warmup_cosine_schedule_and_embedding_step_size():
  """warmup_cosine: 0 at step 0, the peak after warmup, 0 at the end; embed_lr_mult
  scales the embeddings' whole update and nothing else's."""
  c = tiny_config()
  c.optimizer.update(schedule='warmup_cosine', warmup_steps=10, learning_rate=1e-3)
  lr = train_state.learning_rate(c.optimizer, 100)
  np.testing.assert_allclose([lr(0), lr(10), lr(100)], [0.0, 1e-3, 0.0], atol=1e-9)
  p = {'tok_emb': {'embedding': jnp.ones(2)}, 'pos_emb': jnp.ones(2), 'lm_head': jnp.ones(2)}
  g = jax.tree.map(lambda x: 0.5 * x, p)
  step = lambda opt: opt.update(g, opt.init(p), p)[0]
  plain = step(train_state.make_optimizer(length_gen.base_config().optimizer))
  c.optimizer = length_gen.base_config().optimizer
  c.optimizer.embed_lr_mult = 3.0
  scaled = step(train_state.make_optimizer(c.optimizer))
  np.testing.assert_allclose(scaled['tok_emb']['embedding'], 3 * plain['tok_emb']['embedding'])
  np.testing.assert_allclose(scaled['pos_emb'], 3 * plain['pos_emb'])
  np.testing.assert_array_equal(scaled['lm_head'], plain['lm_head'])


def test_the_schedule_spans_every_supervision_update():
  """With an optimizer update per supervision pass, a run of 10 steps and 2 passes makes
  20 updates: the cosine reaches 0 at the 20th, not the 10th."""
  opt = length_gen.base_config().optimizer
  opt.update(schedule='warmup_cosine', warmup_steps=2, learning_rate=1e-2)
  p = {'w': jnp.ones(2)}
  g = {'w': jnp.full(2, 0.5)}

  def update_at(recipe, n):
    tx = train_state.make_optimizer(opt, recipe, total_steps=10)
    state = tx.init(p)
    for _ in range(n):
      updates, state = tx.update(g, state, p)
    return updates['w']

  each = Recipe(n_sup=2, sup_update='each')
  assert np.all(update_at(Recipe(), 15) == 0)  # past its 10 updates: lr 0
  assert np.all(update_at(each, 15) != 0)
  assert np.all(update_at(Recipe(n_sup=2, sup_update='accumulate'), 15) == 0)


def test_config_file_and_overrides():
  argv = [
    'prog',
    f'--config={CONFIG_FILE}:model=trm,task=reverse,runlocal',
    '--config.model.n_embd=48',
    '--config.max_steps=7',
    '--config.eval.lengths=(4,8)',
  ]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'cfg', flag_values=fv, sys_argv=argv)
  fv(argv)
  c = fv.config
  assert (c.model.name, c.task, c.model.n_embd, c.max_steps) == ('trm', 'reverse', 48, 7)
  assert tuple(c.eval.lengths) == (4, 8)
  paper = length_gen.get_config('model=trm')
  assert (paper.model.n_embd, paper.model.n_head, paper.model.dropout, paper.budget) == (
    384,
    6,
    0.1,
    24,
  )
  assert (paper.batch_size, paper.max_steps, paper.seed, paper.model.ponder_cost_weight) == (
    64,
    5000,
    1337,
    0.0,
  )
  assert (paper.eval.every_steps, paper.eval.n_samples, tuple(paper.eval.lengths)) == (
    250,
    100,
    (10, 20, 30, 40, 50),
  )
  with pytest.raises(ValueError, match="Unknown config arg 'modle'"):
    length_gen.get_config('modle=trm')


def test_metric_writer(tmp_path):
  w = writers.MetricWriter(str(tmp_path), tensorboard=True)
  for step in (1, 2, 3):
    w.write(step, 'train', dict(loss=float(step), grad_norm=jnp.float32(float('nan'))))
  w.truncate_after(2)
  w.close()
  records = workdir_lib.read_metrics(str(tmp_path), 'train')
  assert [r['step'] for r in records] == [1, 2] and records[0]['grad_norm'] == 'nan'
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(tmp_path / 'tb'))


def test_main_job_table(tmp_path, capsys):
  rows = ladder.run_ladder(str(tmp_path), max_steps=2, rows_run=('ut', 'trm+norms'))
  assert [r['rung'] for r in rows] == ['ut', 'trm+norms'] and rows[0]['passes'] == ladder.BUDGET
  table = (tmp_path / 'ladder.md').read_text()
  assert '| ut ' in table and f'seq_acc@{ladder.LONGER_LENGTH}' in table
  assert 'Autoregressive TRM + input_norm, carry_norm' in table
  assert 'Universal Transformer' in capsys.readouterr().out
  saved = workdir_lib.read_config(str(tmp_path / 'trm+norms'))['recipe']
  assert saved['input_norm'] and saved['carry_norm']
  # Two recursion steps at the main job's budget: trm's Q-head loop is not
  # ut_level2's ACT in disguise, as it is at one step.
  for name in ('ut_level2', 'trm'):
    mc = builders.model_config(ladder.ladder_config(name, 'copy'))
    assert (mc.n_layer, mc.n_outer_loops, mc.n_inner_loops) == (2, 2, 2)


@pytest.mark.parametrize('name', ['gpt', 'trm'])
def test_one_off_init_keeps_its_bits(name, monkeypatch):
  """Fresh states compiled as `one_off` programs (level 1 on CPU) hold the bits of XLA:CPU's
  default level 3. Level 0 (these tests' XLA_FLAGS) differs: the check can fail, and the
  per-program options do override the flags."""
  c = tiny_config(name, num_seeds=2)
  model = builders.run_model(c)
  optimizer = train_state.make_optimizer(c.optimizer, model.recipe)
  seeds = jnp.asarray(train_state.seeds_of(c), jnp.int32)
  lowered = jax.jit(train_state.stacked_states(model, optimizer)).lower(seeds)
  bits = lambda options: [
    np.asarray(x) for x in jax.tree.leaves(lowered.compile(compiler_options=options)(seeds))
  ]
  default = bits({'xla_backend_optimization_level': 3})
  for a, b in zip(bits(one_off.CPU_OPTIONS), default, strict=True):
    np.testing.assert_array_equal(a, b)
  assert not all(np.array_equal(a, b) for a, b in zip(bits(None), default))
  assert one_off.compiler_options() is None  # XLA_FLAGS sets the level here
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  assert one_off.compiler_options() == one_off.CPU_OPTIONS
