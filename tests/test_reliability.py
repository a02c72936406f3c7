"""What a run survives: damaged checkpoints, torn logs, two trainers, divergence, bad input."""

import glob
import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest
import tiny

from artrm import workdir as workdir_lib
from artrm.training import checkpointing, eval_checkpoint, preemption, train, validation, writers

REPO = os.path.join(os.path.dirname(__file__), '..')


def tiny_config(**overrides):
  """8 steps of a 16-wide gpt on copy: checkpoints at 4 and 8, evaluations at 4 and 8."""
  return tiny.tiny_config(width=16, batch=8, block_size=16, **overrides)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """(workdir of a finished 8-step run, its final params): copied, never changed, by tests."""
  workdir = str(tmp_path_factory.mktemp('trained') / 'run')
  out = train.train_and_evaluate(tiny_config(), workdir)
  return workdir, jax.device_get(out['state'].params)


def copy_of(trained, tmp_path) -> str:
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained[0], workdir)
  return workdir


def damage(workdir: str, kind: str, step: int = 8, which: str = 'checkpoints'):
  """Damages checkpoint `step` as a disk, a crash or a careless hand would.

  Array damage hits every data file of the state: which of them hold the
  arrays (and which only index nodes that a restore never reads) varies.
  """
  ckpt = os.path.join(workdir, which, str(step))
  arrays = glob.glob(f'{ckpt}/state/**/d/*', recursive=True)
  for path in arrays if kind in ('truncated', 'deleted', 'flipped') else []:
    size = os.path.getsize(path)
    if kind == 'truncated':
      os.truncate(path, size // 2)
    elif kind == 'deleted':
      os.remove(path)
    else:  # same size: only a checksum can tell
      with open(path, 'r+b') as f:
        f.seek(size // 2)
        chunk = f.read(8)
        f.seek(-len(chunk), os.SEEK_CUR)
        f.write(bytes(b ^ 0xFF for b in chunk))
  if kind == 'no_manifest':
    os.remove(f'{ckpt}/state/manifest.ocdbt')
  elif kind in ('garbage_metadata', 'garbage_config'):
    name = 'state/_METADATA' if kind == 'garbage_metadata' else 'config/metadata'
    with open(f'{ckpt}/{name}', 'wb') as f:
      f.write(b'\xff\xfe not json')


DAMAGE = ['truncated', 'deleted', 'no_manifest', 'garbage_metadata', 'garbage_config', 'flipped']


@pytest.mark.parametrize('kind', DAMAGE)
def test_resume_falls_back_past_a_damaged_checkpoint(trained, tmp_path, kind, caplog):
  """Resume skips the damaged latest checkpoint, keeps it aside, and ends bitwise equal to
  the uninterrupted run."""
  workdir = copy_of(trained, tmp_path)
  damage(workdir, kind)
  out = train.train_and_evaluate(tiny_config(), workdir)
  chex.assert_trees_all_equal(jax.device_get(out['state'].params), trained[1])
  assert 'Skipped damaged checkpoint' in caplog.text and '8.corrupt' in caplog.text
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['4', '8', '8.corrupt']
  steps = [r['step'] for r in workdir_lib.read_metrics(workdir, 'train')]
  assert steps == [2, 4, 6, 8], 'the repeated steps are logged once'


def test_eval_falls_back_and_changes_nothing(trained, tmp_path, caplog):
  workdir = copy_of(trained, tmp_path)
  damage(workdir, 'flipped')
  _, _, state, step = eval_checkpoint.load_checkpoint(workdir, 'latest')
  assert step == 4 and int(state.step[0]) == 4
  assert 'Skipped damaged checkpoint' in caplog.text
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['4', '8']  # a reader
  os.makedirs(os.path.join(workdir, 'checkpoints', '12.orbax-checkpoint-tmp-1', 'state'))
  assert eval_checkpoint.load_checkpoint(workdir, 'latest')[3] == 4, 'a save in flight is unseen'
  with pytest.raises(checkpointing.CheckpointError, match='No intact checkpoint at step 8'):
    eval_checkpoint.load_checkpoint(workdir, 8)
  [best] = workdir_lib.checkpoint_steps(workdir, workdir_lib.BEST)
  damage(workdir, 'truncated', best, workdir_lib.BEST)
  with pytest.raises(
    checkpointing.CheckpointError, match=f'No intact best checkpoint .*step {best}'
  ):
    eval_checkpoint.load_checkpoint(workdir, 'best')


def test_no_intact_checkpoint_is_a_clear_error_and_moves_nothing(trained, tmp_path):
  workdir = copy_of(trained, tmp_path)
  damage(workdir, 'deleted', 8)
  damage(workdir, 'garbage_config', 4)
  with pytest.raises(
    checkpointing.CheckpointError, match=r'step 8: state unreadable .*; step 4: config unreadable'
  ):
    train.train_and_evaluate(tiny_config(), workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['4', '8']


def test_torn_last_metrics_line_is_dropped(trained, tmp_path, caplog):
  workdir = copy_of(trained, tmp_path)
  path = workdir_lib.path(workdir, workdir_lib.METRICS)
  with open(path, 'a') as f:
    f.write('{"step": 9, "kind": "tra')  # a power cut mid-write
  assert len(workdir_lib.read_metrics(workdir)) > 0 and 'cut short' in caplog.text
  train.train_and_evaluate(tiny_config(), workdir)  # finished: re-running repairs the log
  with open(path) as f:
    assert all(json.loads(line)['step'] <= 8 for line in f)


def test_kill_before_first_checkpoint_logs_no_step_twice(tmp_path, monkeypatch):
  workdir = str(tmp_path / 'run')

  def killed(*args, **kwargs):
    raise KeyboardInterrupt

  with monkeypatch.context() as m:
    m.setattr(checkpointing.RunCheckpoints, 'save', killed)
    with pytest.raises(KeyboardInterrupt):
      train.train_and_evaluate(tiny_config(), workdir)
  assert [r['step'] for r in workdir_lib.read_metrics(workdir, 'train')] == [2, 4]
  train.train_and_evaluate(tiny_config(), workdir)
  assert [r['step'] for r in workdir_lib.read_metrics(workdir, 'train')] == [2, 4, 6, 8]
  assert [r['step'] for r in workdir_lib.read_metrics(workdir, 'eval')] == [4, 8]


@pytest.mark.parametrize('shift', [0.5, -0.5])
def test_resume_replaying_past_a_saved_best_keeps_the_better(tmp_path, monkeypatch, shift):
  """Killed after a best checkpoint but before its first periodic one, a run resumes (orbax's
  StepAlreadyExistsError stopped it for good) and compares its replay with that best: where
  the replayed step evaluates higher (a GPU's replay is not bitwise), it replaces the best
  saved at that step; where lower, the saved best stays."""
  workdir = str(tmp_path / 'run')
  config = tiny_config()
  config.checkpoint.every_steps = 8  # periodic at 8 only; a best at the evaluation at 4
  save, evaluate = checkpointing.RunCheckpoints.save, train.evaluate_seeds

  def killed_at_periodic(self, step, state, cfg, *, best_metrics=None):
    if best_metrics is None:
      raise KeyboardInterrupt
    return save(self, step, state, cfg, best_metrics=best_metrics)

  def shifted(*args, **kwargs):
    out = evaluate(*args, **kwargs)
    for by_length in out.values():
      by_length[config.train_length]['seq_acc'] += shift
    return out

  with monkeypatch.context() as m:
    m.setattr(checkpointing.RunCheckpoints, 'save', killed_at_periodic)
    with pytest.raises(KeyboardInterrupt):
      train.train_and_evaluate(config, workdir)
  assert workdir_lib.checkpoint_steps(workdir, workdir_lib.BEST) == [4]
  first = checkpointing.RunCheckpoints(workdir, create=False).best_metrics()
  monkeypatch.setattr(train, 'evaluate_seeds', shifted)
  train.train_and_evaluate(config, workdir)
  best = checkpointing.RunCheckpoints(workdir, create=False).best_metrics()
  if shift > 0:
    assert best['value'] >= first['value'] + shift
  else:
    assert best == first
  assert [r['step'] for r in workdir_lib.read_metrics(workdir, 'train')] == [2, 4, 6, 8]


def test_one_trainer_per_workdir_and_a_dead_ones_lock_is_taken_over(tmp_path):
  workdir = str(tmp_path / 'run')
  holder = subprocess.Popen(
    [
      sys.executable,
      '-c',
      'import sys, time; from artrm import workdir\n'
      'with workdir.lock(sys.argv[1]):\n  print("held", flush=True); time.sleep(120)',
      workdir,
    ],
    stdout=subprocess.PIPE,
    text=True,
    env={**os.environ, 'PYTHONPATH': REPO},
  )
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(workdir_lib.WorkdirBusyError, match=f'PID {holder.pid} on host'):
      train.train_and_evaluate(tiny_config(), workdir)
    assert os.listdir(workdir) == ['lock'], 'the refused trainer wrote nothing'
  finally:
    holder.kill()  # SIGKILL: no cleanup runs, the lock file stays
    holder.wait()
  with workdir_lib.lock(workdir):
    with open(workdir_lib.path(workdir, workdir_lib.LOCK)) as f:
      assert f.read().startswith(f'PID {os.getpid()} ')


def test_divergence_advice_resumes_with_the_new_optimizer(trained, tmp_path):
  """The overflowing update is not kept; the flags the message names resume the run."""
  workdir = copy_of(trained, tmp_path)
  diverging = tiny_config(max_steps=12)
  diverging.optimizer.learning_rate = 1e39
  with pytest.raises(
    FloatingPointError,
    match=r'params or optimizer state after the update at step 9.*step 8 holds '
    r'finite params.*--config.optimizer.learning_rate=1e\+38 \(now 1e\+39\) '
    r'or --config.optimizer.grad_clip_norm=1.0',
  ):
    train.train_and_evaluate(diverging, workdir)
  assert workdir_lib.checkpoint_steps(workdir) == [4, 8]
  remedied = tiny_config(max_steps=12)
  remedied.optimizer.update(learning_rate=1e-4, grad_clip_norm=1.0)  # clipping: a new opt state
  out = train.train_and_evaluate(remedied, workdir)
  assert int(out['state'].step[0]) == 12
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(out['state'].params)))
  resume = workdir_lib.read_metrics(workdir, 'resume')[-1]  # the diverging attempt's, then this
  assert resume['step'] == 8 and resume['changes'] == {
    'optimizer.grad_clip_norm': [0.0, 1.0],
    'optimizer.learning_rate': [3e-4, 1e-4],
  }
  other = tiny_config(max_steps=16)
  other.optimizer.update(learning_rate=1e-4, grad_clip_norm=1.0, b1=0.5)
  with pytest.raises(checkpointing.ConfigMismatchError, match='optimizer.b1'):  # others may not
    train.train_and_evaluate(other, workdir)


def test_a_field_the_saved_config_lacks_held_its_default(trained, tmp_path):
  """A run saved before a config field existed resumes with that field at its default, and
  is refused with it set otherwise: the saved run trained without it."""
  workdir = copy_of(trained, tmp_path)
  path = os.path.join(workdir, 'checkpoints', '8', 'config', 'metadata')
  with open(path) as f:
    saved = json.load(f)
  del saved['optimizer']['embed_lr_mult']
  with open(path, 'w') as f:
    json.dump(saved, f)
  changed = tiny_config(max_steps=12)
  changed.optimizer.embed_lr_mult = 2.0
  with pytest.raises(checkpointing.ConfigMismatchError, match=r'embed_lr_mult: 1.0 -> 2.0'):
    train.train_and_evaluate(changed, workdir)
  out = train.train_and_evaluate(tiny_config(max_steps=12), workdir)
  assert int(out['state'].step[0]) == 12


def test_overflowing_update_is_never_checkpointed(tmp_path):
  c = tiny_config()
  c.optimizer.learning_rate = 1e39
  c.checkpoint.every_steps = 1
  with pytest.raises(
    FloatingPointError, match='after the update at step 1.*No checkpoint was saved'
  ):
    train.train_and_evaluate(c, str(tmp_path))
  assert workdir_lib.checkpoint_steps(str(tmp_path)) == []


@pytest.mark.parametrize(
  'field,value,match',
  [
    ('batch_size', 0, r'config.batch_size=0: must be an integer >= 1'),
    ('eval.every_steps', 0, r'config.eval.every_steps=0: must be an integer >= 1'),
    ('log.every_steps', 0, r'config.log.every_steps=0'),
    ('eval.n_samples', 0, r'config.eval.n_samples=0'),
    ('num_seeds', 0, r'config.num_seeds=0'),
    ('max_steps', -5, r'config.max_steps=-5: must be an integer >= 1'),
    ('checkpoint.best_metric', 'accuracy', r"best_metric='accuracy': must be one of \["),
    ('optimizer.learning_rate', -1.0, r'learning_rate=-1.0: must be a finite number in \(0'),
    ('eval.lengths', (), r'eval.lengths=\(\): must be a non-empty tuple'),
  ],
)
def test_bad_config_is_refused_before_any_work(tmp_path, field, value, match):
  c = tiny_config()
  section, _, key = field.rpartition('.')
  (c[section] if section else c)[key] = value
  with pytest.raises(validation.ConfigError, match=match):
    train.train_and_evaluate(c, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


def test_bad_eval_input_is_refused_and_writes_nothing(trained, tmp_path):
  missing = str(tmp_path / 'nothing_here')
  with pytest.raises(FileNotFoundError, match='No training run in'):
    eval_checkpoint.evaluate_checkpoint(missing)
  assert not os.path.exists(missing)
  with pytest.raises(
    ValueError, match="checkpoint must be 'latest', 'best' or a step number, got 'last'"
  ):
    eval_checkpoint.evaluate_checkpoint(trained[0], 'last')
  with pytest.raises(validation.ConfigError, match='lengths=abc: must be integers >= 1'):
    eval_checkpoint.evaluate_checkpoint(trained[0], 'latest', {'lengths': ['abc']})


GOLDEN_DIR = os.environ.get('ARTRM_GOLDEN_DIR', os.path.join(REPO, '..', 'shared', 'golden'))


def golden_arrays(name: str) -> dict:
  """The golden vectors of rung `name` (skips where the golden files are absent)."""
  golden = os.path.join(GOLDEN_DIR, f'{name}.npz')
  if not os.path.exists(golden):
    pytest.skip(f'no golden files in {GOLDEN_DIR}')
  with np.load(golden) as f:
    return dict(f)


def test_neutral_loader_names_what_does_not_fit(tmp_path):
  from artrm.models import load_neutral

  arrays = golden_arrays('trm')
  params = sorted(k for k in arrays if k.startswith('param/block/'))
  broken = {k: v for k, v in arrays.items() if k != params[0]}
  broken[params[1]] = broken[params[1]][..., :-1]
  broken['param/extra'] = np.zeros(3)
  np.savez(tmp_path / 'broken.npz', **broken)
  with pytest.raises(ValueError, match=r'does not fit trm .*missing .*unexpected extra.* is \('):
    load_neutral(tmp_path / 'broken.npz')
  np.savez(tmp_path / 'no_model.npz', **{k: v for k, v in arrays.items() if k != 'config/model'})
  with pytest.raises(ValueError, match='no such entry'):  # it used to load as gpt
    load_neutral(tmp_path / 'no_model.npz')


def signalling(fn, calls: set[int], signum=signal.SIGTERM):
  """`fn`, which sends this process `signum` at the start of its calls numbered in `calls`."""
  count = itertools.count(1)

  def wrapped(*args, **kwargs):
    if next(count) in calls:
      os.kill(os.getpid(), signum)
    return fn(*args, **kwargs)

  return wrapped


# (what to signal in, at which of its calls): inside step 3's bookkeeping, a step drawn at
# random, during the save of the best checkpoint at step 4, during the evaluation at step 4.
MOMENTS = [
  ('step', 3),
  ('step', random.Random(33).randint(1, 7)),
  ('save', 1),
  ('evaluate', 1),
]


@pytest.mark.parametrize('where,call', MOMENTS)
def test_sigterm_stops_at_a_checkpoint_and_the_same_command_resumes_bitwise(
  trained, tmp_path, monkeypatch, where, call
):
  workdir = str(tmp_path / 'run')
  target = {
    'step': (writers.MetricWindow, 'add'),
    'save': (checkpointing.RunCheckpoints, 'save'),
    'evaluate': (train, 'evaluate_seeds'),
  }[where]
  with monkeypatch.context() as m:
    m.setattr(*target, signalling(getattr(*target), {call}))
    with pytest.raises(preemption.Preempted, match=r'Stopped by SIGTERM after step (\d)') as e:
      train.train_and_evaluate(tiny_config(), workdir)
  step = int(re.search(r'after step (\d)', str(e.value))[1])
  assert workdir_lib.checkpoint_steps(workdir)[-1] == step
  assert workdir_lib.read_metrics(workdir)[-1] == {
    'step': step,
    'kind': 'preempted',
    'by': 'SIGTERM',
  }
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, 'the handlers are put back'
  out = train.train_and_evaluate(tiny_config(), workdir)
  chex.assert_trees_all_equal(jax.device_get(out['state'].params), trained[1])
  records = [
    (r['step'], r['kind']) for r in workdir_lib.read_metrics(workdir) if r['kind'] != 'setup'
  ]
  assert len(records) == len(set(records)), 'no step logged twice'
  assert [s for s, kind in records if kind == 'eval'] == [4, 8]
  assert {s for s, kind in records if kind == 'train'} == {2, 4, 6, 8, step}


def test_a_second_signal_stops_at_once(tmp_path, monkeypatch):
  """SIGINT (Ctrl-C) asks for a stop at a checkpoint; a second, during that save, ends the
  process there (here: raises in its place), before anything more is written."""
  workdir = str(tmp_path / 'run')

  class Killed(Exception):
    pass

  def killed(signum):
    raise Killed(signal.Signals(signum).name)

  monkeypatch.setattr(preemption, '_exit_now', killed)
  monkeypatch.setattr(
    writers.MetricWindow, 'add', signalling(writers.MetricWindow.add, {1}, signal.SIGINT)
  )
  save = checkpointing.RunCheckpoints.save
  monkeypatch.setattr(checkpointing.RunCheckpoints, 'save', signalling(save, {1}, signal.SIGINT))
  with pytest.raises(Killed, match='SIGINT'):
    train.train_and_evaluate(tiny_config(), workdir)
  assert not workdir_lib.read_metrics(workdir, 'preempted')
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.fixture
def small_disk(tmp_path):
  """A 4 MiB filesystem of its own (tmpfs), for the test to fill and free."""
  disk = tmp_path / 'disk'
  disk.mkdir()
  mount = subprocess.run(
    ['mount', '-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', str(disk)], capture_output=True, text=True
  )
  if mount.returncode:
    pytest.skip(
      f'a full disk needs a small filesystem, and mounting a tmpfs failed: {mount.stderr}'
    )
  yield disk
  subprocess.run(['umount', str(disk)], check=True)


def fill(disk) -> str:
  """Writes a file until the disk is full; returns its path."""
  path = os.path.join(disk, 'filler')
  with open(path, 'wb', buffering=0) as f:
    with pytest.raises(OSError, match='No space left on device'):
      while True:
        f.write(b'\0' * 65536)
  return path


@pytest.mark.parametrize('when', ['save', 'eval'])
def test_full_disk_keeps_the_last_checkpoint_and_the_same_command_resumes_bitwise(
  trained, small_disk, monkeypatch, caplog, when
):
  """The disk fills before the periodic save at step 8, or before the evaluation at step 8
  writes its records: one line names the file and the cause, the checkpoint at step 4 stays
  the latest with no unfinished save beside it, and once there is space the run resumes."""
  workdir = str(small_disk / 'run')
  save, evaluate = checkpointing.RunCheckpoints.save, train.evaluate_seeds
  filler, evaluations = [], []

  def filling_save(self, step, *args, best_metrics=None, **kwargs):
    if step == 8 and best_metrics is None and when == 'save':
      self.wait()
      filler.append(fill(small_disk))
    return save(self, step, *args, best_metrics=best_metrics, **kwargs)

  def filling_evaluate(*args, **kwargs):
    evaluations.append(None)
    if when == 'eval' and len(evaluations) == 2:  # at step 8, checkpoint 4 finished
      while workdir_lib.checkpoint_steps(workdir) != [4]:
        time.sleep(0.01)
      filler.append(fill(small_disk))
    return evaluate(*args, **kwargs)

  with monkeypatch.context() as m:
    m.setattr(checkpointing.RunCheckpoints, 'save', filling_save)
    m.setattr(train, 'evaluate_seeds', filling_evaluate)
    with pytest.raises(workdir_lib.WriteError) as e:
      train.train_and_evaluate(tiny_config(), workdir)
  message = str(e.value)
  assert '\n' not in message and message.startswith('Could not ') and workdir in message
  assert 'No space left on device' in message and message.endswith(
    'Free space there (or make it writable) and re-run the same command: it resumes from its '
    'checkpoint at step 4.'
  )
  assert not [r for r in caplog.records if r.levelname == 'ERROR'], 'no error but that one'
  assert workdir_lib.checkpoint_steps(workdir) == [4]
  unfinished = glob.glob(f'{workdir}/**/*tmp*/**', recursive=True)
  assert not [p for p in unfinished if os.path.isfile(p)], 'no file of the save is left'
  os.remove(filler[0])
  out = train.train_and_evaluate(tiny_config(), workdir)
  chex.assert_trees_all_equal(jax.device_get(out['state'].params), trained[1])
  records = [
    (r['step'], r['kind']) for r in workdir_lib.read_metrics(workdir) if r['kind'] != 'setup'
  ]
  assert records == [
    (2, 'train'),
    (4, 'train'),
    (4, 'eval'),
    (6, 'train'),
    (8, 'train'),
    (8, 'eval'),
  ]
  assert not glob.glob(f'{workdir}/**/*tmp*', recursive=True), 'the next run removed the rest'


def test_neutral_loader_names_a_block_that_differs(tmp_path):
  from artrm.models import load_neutral

  arrays = golden_arrays('gpt')
  np.savez(
    tmp_path / 'missing.npz', **{k: v for k, v in arrays.items() if k != 'param/blocks/1/ln1/scale'}
  )
  with pytest.raises(
    ValueError, match=r'missing.npz: .*: missing param/blocks/1/ln1/scale \(32,\)\.$'
  ):
    load_neutral(tmp_path / 'missing.npz')
  arrays['param/blocks/2/mlp/fc1/bias'] = arrays['param/blocks/2/mlp/fc1/bias'][:-1]
  np.savez(tmp_path / 'misshapen.npz', **arrays)
  with pytest.raises(
    ValueError, match=r'param/blocks/2/mlp/fc1/bias is \(127,\), expected \(128,\)\.$'
  ):
    load_neutral(tmp_path / 'misshapen.npz')


def test_unreadable_checkpoint_metadata_is_not_an_error(trained, tmp_path, caplog):
  """Orbax's own `_CHECKPOINT_METADATA` of a step overwritten: the state, checked against its
  fingerprint, restores, and nothing is reported as an error."""
  workdir = copy_of(trained, tmp_path)
  with open(os.path.join(workdir, 'checkpoints', '8', '_CHECKPOINT_METADATA'), 'w') as f:
    f.write('{not json')
  out = train.train_and_evaluate(tiny_config(), workdir)
  assert int(out['state'].step[0]) == 8
  chex.assert_trees_all_equal(jax.device_get(out['state'].params), trained[1])
  assert not [r.getMessage() for r in caplog.records if r.levelname == 'ERROR']
