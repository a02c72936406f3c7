"""Stacks: runs that differ in task and seed, trained as one program, each equal to the run
trained alone and kept in its own workdir."""

import os
import shutil
import textwrap

import chex
import jax
import numpy as np
import pytest
from tiny import tiny_config

from artrm import workdir as workdir_lib
from artrm.data import get_task
from artrm.tools import launch, suites
from artrm.training import stacking, train, validation

# Copy and reverse share a layout; addition's rows are longer: the stack pads every row to it.
PADDED = get_task('addition').seq_len(3)


def stack_configs(name: str, **overrides):
  """Copy with 2 seeds, reverse and addition with one each, on other seeds."""
  runs = [('copy', 1337, 2), ('reverse', 1400, 1), ('addition', 1500, 1)]
  configs = []
  for task, seed, n in runs:
    c = tiny_config(name, task=task, seed=seed, num_seeds=n, train_seq_len=PADDED, **overrides)
    if name == 'trm':
      c.model.dropout = 0.1  # dropout masks and halting exploration per member
    configs.append(c)
  return configs


def params_of(out):
  return jax.device_get(out['state'].params)


def test_a_stack_equals_its_runs_trained_alone_and_resumes(tmp_path):
  """Copy, reverse and addition rows padded to one length; `trm` draws dropout and halting
  exploration per member. The stack trains to step 4, stops, and the same command resumes
  it to 8."""
  name = 'trm'
  configs = stack_configs(name)
  workdirs = [str(tmp_path / f'stack_{c.task}') for c in configs]
  train.train_stack(stack_configs(name, max_steps=4), workdirs)
  stacked = train.train_stack(configs, workdirs)
  for c, out in list(zip(configs, stacked))[1:]:  # (vmapped seeds alone: test_train)
    alone = train.train_and_evaluate(c, str(tmp_path / f'alone_{c.task}'))
    chex.assert_trees_all_close(params_of(out), params_of(alone), rtol=1e-5, atol=1e-6)
    for seed, by_length in out['eval'].items():
      np.testing.assert_allclose(by_length[3]['char_acc'], alone['eval'][seed][3]['char_acc'])
  for c, workdir, out in zip(configs, workdirs, stacked):
    assert sorted(out['eval']) == [c.seed + i for i in range(c.num_seeds)]
    setup = workdir_lib.read_metrics(workdir, 'setup')[-1]
    assert setup['stacked_runs'] == 3 and setup['seeds'] == sorted(out['eval'])
    logged = [(r['step'], r['seed']) for r in workdir_lib.read_metrics(workdir, 'train')]
    assert logged == [(s, seed) for s in (2, 4, 6, 8) for seed in sorted(out['eval'])]
    assert workdir_lib.read_final_eval(workdir)['step'] == 8
    assert workdir_lib.checkpoint_steps(workdir) == [4, 8]


def test_a_stack_of_one_layout_needs_no_padding_and_starts_level(tmp_path):
  """Copy and reverse rows have one length: they stack as they are, each run as alone; ACT
  (`ut`) halts per member. Runs whose checkpoints are at different steps are refused."""
  configs = [tiny_config('ut', task=t, seed=s) for t, s in (('copy', 1), ('reverse', 2))]
  workdirs = [str(tmp_path / c.task) for c in configs]
  train.train_and_evaluate(tiny_config('ut', task='copy', seed=1, max_steps=4), workdirs[0])
  with pytest.raises(validation.ConfigError, match='resume from one step'):
    train.train_stack(configs, workdirs)
  train.train_and_evaluate(tiny_config('ut', task='reverse', seed=2, max_steps=4), workdirs[1])
  stacked = train.train_stack(configs, workdirs)
  alone = train.train_and_evaluate(configs[1], str(tmp_path / 'alone'))
  chex.assert_trees_all_close(params_of(stacked[1]), params_of(alone), rtol=1e-5, atol=1e-6)
  assert workdir_lib.read_metrics(workdirs[1], 'setup')[-1]['stacked_runs'] == 2


@pytest.mark.parametrize(
  'change,error',
  [
    (lambda cs: cs[1].model.update(name='ut'), r'differ: model\.name'),
    (lambda cs: cs[1].update(batch_size=8), r'differ: batch_size'),
    (lambda cs: [c.update(train_seq_len=0) for c in cs], rf'train_seq_len={PADDED} on every'),
  ],
)
def test_runs_that_cannot_stack_are_refused_before_any_work(tmp_path, change, error):
  configs = stack_configs('gpt')
  change(configs)
  workdirs = [str(tmp_path / c.task) for c in configs]
  with pytest.raises(validation.ConfigError, match=error):
    train.train_stack(configs, workdirs)
  assert not any(map(os.path.exists, workdirs))


def test_member_slices_follow_each_runs_seeds():
  configs = stack_configs('gpt')
  assert stacking.member_slices(configs) == [slice(0, 2), slice(2, 3), slice(3, 4)]
  assert stacking.stack_tasks(configs) == ('copy', 'reverse', 'addition', 'addition_rev')


TASK_SUITE = textwrap.dedent("""
    from artrm.configs import length_gen

    def get_config(arg=None):
      c = length_gen.get_config('model=gpt,task=copy,runlocal')
      c.model.update(n_embd=32, n_head=2, block_size=24)
      c.update(budget=2, train_length=3, batch_size=16, max_steps=4)
      c.eval.update(lengths=(3,), every_steps=2, n_samples=8, batch_size=8)
      c.log.every_steps = 2
      return c

    def get_sweep(arg=None):
      return [{'task': t} for t in ('copy', 'reverse', 'addition')]
    """)


def test_the_suite_launcher_stacks_compatible_runs(tmp_path):
  """`layout` stacks copy with reverse and leaves addition alone; `all` stacks the three;
  `off` none; runs at different checkpoint steps go apart. The stacked suite trains and
  every run is finished in its own workdir."""
  spec = str(tmp_path / 'suite.py')
  open(spec, 'w').write(TASK_SUITE)
  root = str(tmp_path / 'root')
  runs = suites.suite_runs(spec, root)
  names = lambda groups: [[r.name.split('=')[1] for r in g] for g in groups]
  assert names(suites.stacks(spec, runs, 'layout')) == [['copy', 'reverse'], ['addition']]
  assert names(suites.stacks(spec, runs, 'all')) == [['copy', 'reverse', 'addition']]
  assert names(suites.stacks(spec, runs, 'all', max_size=2)) == [['copy', 'reverse'], ['addition']]
  assert names(suites.stacks(spec, runs, 'off')) == [['copy'], ['reverse'], ['addition']]
  lines = []
  launch.run_local(spec, root, stack='layout', dry_run=True, log=lines.append)
  assert lines[1] == '3 runs in 2 stacks (--stack=layout)'
  assert ' stack ' in lines[3] and '--runs=0,1' in lines[3] and ' train ' in lines[4]
  assert launch.run_local(spec, root, stack='layout', slots=1, log=lines.append) == [0, 0]
  todo, done = launch.pending_runs(spec, root)
  assert not todo and len(done) == 3
  stacked = workdir_lib.read_metrics(os.path.join(root, 'task=reverse'), 'setup')
  assert stacked[-1]['stacked_runs'] == 2
  shutil.rmtree(os.path.join(root, 'task=copy', 'checkpoints', '4'))  # copy: an earlier step
  assert names(suites.stacks(spec, runs, 'all')) == [['copy'], ['reverse', 'addition']]
