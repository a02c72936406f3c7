"""Two processes on this machine, one CPU device each, train one run (jax.distributed, gloo).

One run, two launches, as on a cluster: the rendered SLURM script (fake `srun`/`scontrol`
on PATH) starts both processes, which are killed just after step 3 (the step-2 checkpoint
saved); the rendered TPU-pod command (fake metadata `curl`) re-launches them and they
resume to step 4. Every file of the workdir is then compared with a single-process run of
the same config over two (faked) devices: the same batch split, hence the same
reduction order, so the params, losses and evaluations are bitwise equal.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from artrm import parallel
from artrm import workdir as workdir_lib
from artrm.tools import launch, suites
from artrm.training import eval_checkpoint, preemption, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.multiprocess
KILL_AT = 3  # both processes die right after logging this step (checkpoint 2 saved)

# A tiny gpt run as a config file: {max_steps} steps, evaluated every {eval_every}.
CONFIG = textwrap.dedent("""
    from artrm.configs import length_gen

    def get_config(arg=None):
      c = length_gen.get_config('model=gpt,task=copy,runlocal')
      c.model.update(n_embd=16, n_head=2, block_size=24)
      c.update(budget=2, train_length=3, batch_size=8, max_steps={max_steps})
      c.eval.update(lengths=(3,), every_steps={eval_every}, n_samples=6, batch_size=6)
      c.log.update(every_steps=1, progress_bar=False)
      c.checkpoint.every_steps = 2
      return c
    """)
SUITE = CONFIG.format(max_steps=4, eval_every=2) + textwrap.dedent("""
    def get_sweep(arg=None):
      return [{'model.name': 'gpt'}]
    """)

# Imported at start-up by every process of the test (first on PYTHONPATH); acts in
# `artrm train` only: records how each eval chunk is split, saves this process's final
# params, with ARTRM_TEST_KILL_AT kills the process once that step is logged, and with
# ARTRM_TEST_SIGTERM_AT sends it SIGTERM there (a preemption notice to it alone).
HOOKS = textwrap.dedent("""
    import os, signal, sys, time
    if 'train' in sys.orig_argv and os.environ.get('ARTRM_TEST_OUT'):
      import jax, numpy as np
      from artrm import parallel
      from artrm.training import train, writers

      out, chunks = os.environ['ARTRM_TEST_OUT'], []
      shard_batch, run = parallel.shard_batch, train.train_and_evaluate
      write = writers.MetricWriter.write

      def recording_shard_batch(x, mesh):
        y = shard_batch(x, mesh)
        chunks.append((y.shape[0], sum(s.data.shape[0] for s in y.addressable_shards)))
        return y

      def saving_run(config, workdir):
        result = run(config, workdir)
        leaves = [np.asarray(x) for x in jax.tree.leaves(result['state'].params)]
        np.savez(os.path.join(out, f'process{jax.process_index()}.npz'), *leaves,
                 chunks=np.asarray(chunks))
        return result

      def killing_write(self, step, kind, scalars):
        write(self, step, kind, scalars)
        if kind == 'train' and step == int(os.environ.get('ARTRM_TEST_KILL_AT', -1)):
          done = os.path.join(os.path.dirname(self.path), 'checkpoints', str(step - 1),
                              'commit_success.txt')
          for _ in range(600):
            if os.path.exists(done):
              break
            time.sleep(0.1)
          os.kill(os.getpid(), signal.SIGKILL)
        if kind == 'train' and step == int(os.environ.get('ARTRM_TEST_SIGTERM_AT', -1)):
          os.kill(os.getpid(), signal.SIGTERM)

      parallel.shard_batch, train.train_and_evaluate = recording_shard_batch, saving_run
      writers.MetricWriter.write = killing_write
    """)

FAKE_SRUN = textwrap.dedent("""\
    #!/bin/bash
    # srun here: SLURM_NTASKS copies of the command, SLURM_PROCID set; the worst exit code.
    while [[ "$1" == -* ]]; do shift; done
    pids=()
    for ((i = 0; i < SLURM_NTASKS; i++)); do SLURM_PROCID=$i "$@" & pids+=($!); done
    rc=0; for p in "${pids[@]}"; do wait "$p" || rc=$?; done; exit $rc
    """)
FAKE_SCONTROL = '#!/bin/bash\necho 127.0.0.1\n'
# The TPU VM metadata server of worker $FAKE_TPU_WORKER in a two-host pod.
FAKE_CURL = textwrap.dedent("""\
    #!/bin/bash
    case "${@: -1}" in
      */worker-network-endpoints) echo unknown:unknown:127.0.0.1,unknown:unknown:127.0.0.1 ;;
      */agent-worker-number) echo "$FAKE_TPU_WORKER" ;;
      *) exit 22 ;;
    esac
    """)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def process_env(tmp_path, out_dir, **extra) -> dict:
  """A subprocess environment: one CPU device (the tests' other XLA flags), the hooks, fake
  cluster tools, a free port, and a compilation cache that the second launch reads."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(('ARTRM_', 'SLURM_', 'TPU_'))}
  env.update(
    XLA_FLAGS=' '.join(f for f in os.environ['XLA_FLAGS'].split() if 'device_count' not in f),
    JAX_PLATFORMS='cpu',
    JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'jax_cache'),
    PYTHONPATH=f'{tmp_path / "hooks"}:{REPO}',
    ARTRM_TEST_OUT=str(out_dir),
    PATH=f'{tmp_path / "bin"}:{env["PATH"]}',
    ARTRM_PORT=str(free_port()),
    **extra,
  )
  os.makedirs(out_dir, exist_ok=True)
  return env


def leaves(tree) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def records(workdir: str) -> list[dict]:
  """Train and eval records without their timings."""
  timing = ('steps_per_sec', 'tokens_per_sec')
  return [
    {k: v for k, v in r.items() if k not in timing}
    for r in workdir_lib.read_metrics(workdir)
    if r['kind'] != 'setup'
  ]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """(two-process run, single-process reference run, the test's output dir)."""
  tmp_path = tmp_path_factory.mktemp('multihost')
  spec = str(tmp_path / 'suite.py')
  (tmp_path / 'suite.py').write_text(SUITE)
  (tmp_path / 'hooks').mkdir()
  (tmp_path / 'hooks' / 'sitecustomize.py').write_text(HOOKS)
  (tmp_path / 'bin').mkdir()
  python = f'#!/bin/sh\nexec {sys.executable} "$@"\n'  # the commands' `python`: this one
  for name, text in [
    ('srun', FAKE_SRUN),
    ('scontrol', FAKE_SCONTROL),
    ('curl', FAKE_CURL),
    ('python', python),
  ]:
    (tmp_path / 'bin' / name).write_text(text)
    (tmp_path / 'bin' / name).chmod(0o755)
  root = str(tmp_path / 'root')
  [run] = suites.suite_runs(spec, root)

  reference = str(tmp_path / 'reference')
  assert jax.device_count() == 2, 'conftest fakes two CPU devices: the batch split of two processes'
  train.train_and_evaluate(suites.run_config(spec, run), reference)

  # Launch 1: the rendered SLURM array script, run here as task 0 of a two-node job.
  with contextlib.chdir(REPO):  # the script runs from where it was rendered
    script, lines = launch.slurm_submission(spec, root, hosts=2, python=sys.executable)
  os.makedirs(root)
  with open(os.path.join(root, 'slurm_runs.txt'), 'w') as f:
    f.write(lines)
  env = process_env(
    tmp_path,
    tmp_path / 'launch1',
    ARTRM_TEST_KILL_AT=str(KILL_AT),
    SLURM_ARRAY_TASK_ID='0',
    SLURM_JOB_ID='7',
    SLURM_NTASKS='2',
    SLURM_JOB_NODELIST='node[0-1]',
  )
  killed = subprocess.run(
    ['bash', '-c', script], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert killed.returncode == 128 + signal.SIGKILL, killed.stderr[-3000:]
  assert workdir_lib.read_metrics(run.workdir)[-1]['step'] == KILL_AT

  # Launch 2: the rendered TPU-pod command, once per host; the suite resumes the run.
  [inner] = [
    a.removeprefix('--command=')
    for a in launch.tpu_command(spec, root, tpu_name='pod', zone='here', repo_dir=REPO)
    if a.startswith('--command=')
  ]
  env = process_env(tmp_path, tmp_path / 'launch2')
  hosts = [
    subprocess.Popen(
      ['bash', '-c', inner],
      env=dict(env, FAKE_TPU_WORKER=str(i)),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  for host in hosts:
    output = host.communicate(timeout=300)[0]
    assert host.returncode == 0, output[-3000:]
  return run.workdir, reference, tmp_path / 'launch2'


def test_both_processes_end_with_the_single_process_params(runs):
  workdir, reference, out = runs
  ref = leaves(eval_checkpoint.load_checkpoint(reference)[2].params)
  for i in range(2):
    saved = np.load(out / f'process{i}.npz')
    params = [saved[f'arr_{j}'] for j in range(len(saved.files) - 1)]
    assert len(params) == len(ref)
    for a, b in zip(params, ref):
      np.testing.assert_array_equal(a, b)
    # Each process decoded half of every (padded) chunk of eval prompts.
    assert all(local * 2 == total for total, local in saved['chunks']), saved['chunks']


def test_checkpoints_restore_in_one_process_and_resume_was_exact(runs):
  workdir, reference, _ = runs
  for step in (2, 4):
    got = eval_checkpoint.load_checkpoint(workdir, step)
    want = eval_checkpoint.load_checkpoint(reference, step)
    assert got[3] == want[3] == step
    for a, b in zip(leaves(got[2]), leaves(want[2])):  # params, optimizer state, step, rng
      np.testing.assert_array_equal(a, b)


def test_files_are_written_once_and_match_one_process(runs):
  workdir, reference, _ = runs
  got, want = records(workdir), records(reference)
  assert got == want  # step 3, logged before the kill, was dropped on resume and re-logged
  assert len({(r['step'], r['kind']) for r in got}) == len(got) == 6  # 4 train + 2 eval
  read = lambda d, name: json.load(open(os.path.join(d, name)))
  for name in (
    workdir_lib.CONFIG,
    workdir_lib.FINAL_EVAL,
    'eval/seed1337_step_000002.json',
    'eval/seed1337_step_000004.json',
  ):
    assert read(workdir, name) == read(reference, name), name


def test_artrm_eval_in_one_process_reproduces_the_logged_metrics(runs):
  workdir, _, _ = runs
  results = eval_checkpoint.evaluate_checkpoint(workdir)
  [logged] = [r for r in workdir_lib.read_metrics(workdir, 'eval') if r['step'] == 4]
  assert {'step': 4, 'kind': 'eval', 'seed': 1337, **train.eval_scalars(results[1337])} == logged
  final = workdir_lib.read_final_eval(workdir)['results']
  assert results == final


def test_distributed_args_from_the_environment():
  assert parallel.distributed_args({}) is None
  env = {'ARTRM_COORDINATOR': '10.0.0.1:1234', 'ARTRM_NUM_PROCESSES': '2', 'ARTRM_PROCESS_ID': '1'}
  assert parallel.distributed_args(env) == dict(
    coordinator_address='10.0.0.1:1234', num_processes=2, process_id=1
  )
  for bad in (
    {'ARTRM_COORDINATOR': 'h:1'},
    {**env, 'ARTRM_PROCESS_ID': '2'},
    {**env, 'ARTRM_COORDINATOR': 'no-port'},
    {**env, 'ARTRM_NUM_PROCESSES': 'x'},
  ):
    with pytest.raises(ValueError, match='ARTRM_NUM_PROCESSES, ARTRM_PROCESS_ID all set'):
      parallel.distributed_args(bad)
  # One process, explicitly or by default, starts no distributed runtime.
  assert not parallel.maybe_initialize_distributed(
    {**env, 'ARTRM_NUM_PROCESSES': '1', 'ARTRM_PROCESS_ID': '0'}
  )
  assert not parallel.maybe_initialize_distributed({'SLURM_NTASKS': '1'})
  assert (
    parallel.peer_timeout_s({}) == 60 and parallel.peer_timeout_s({'ARTRM_PEER_TIMEOUT': '5'}) == 5
  )
  with pytest.raises(ValueError, match="ARTRM_PEER_TIMEOUT='0': must be a whole number of seconds"):
    parallel.peer_timeout_s({'ARTRM_PEER_TIMEOUT': '0'})
  assert parallel.lost_peer(ValueError('Connection closed by peer')) is None  # one process


PEER_CONFIG = CONFIG.format(max_steps=8, eval_every=4)


def test_a_lost_process_stops_the_other_and_a_preempted_run_stops_together(tmp_path):
  """Two processes train 8 steps, launched three times with the same command. First one is
  killed at step 3: the other ends at once, with one line naming it. Then one alone gets
  SIGTERM at step 5: both stop there, checkpointed, with the requeue code. Then they
  finish: every step logged once. (Resumed runs' bits: `runs` above.)"""
  (tmp_path / 'hooks').mkdir()
  (tmp_path / 'hooks' / 'sitecustomize.py').write_text(HOOKS)
  (tmp_path / 'config.py').write_text(PEER_CONFIG)
  workdir, started = str(tmp_path / 'run'), []

  def launch(name, **by_process):
    """Both processes, ARTRM_TEST_<key> set in process i from by_process[key][i]."""
    env = process_env(tmp_path, tmp_path / name, ARTRM_PEER_TIMEOUT='10')
    env.update(ARTRM_COORDINATOR=f'127.0.0.1:{env["ARTRM_PORT"]}', ARTRM_NUM_PROCESSES='2')
    argv = ['-m', 'artrm', 'train', f'--config={tmp_path / "config.py"}', f'--workdir={workdir}']
    started.extend(
      subprocess.Popen(
        [sys.executable, *argv],
        env=dict(
          env, ARTRM_PROCESS_ID=str(i), **{f'ARTRM_TEST_{k}': v[i] for k, v in by_process.items()}
        ),
        stderr=subprocess.PIPE,
        text=True,
      )
      for i in range(2)
    )
    return started[-2:]

  try:
    survivor, killed = launch('lost', KILL_AT=['-1', '3'])
    assert killed.wait(timeout=120) == -signal.SIGKILL
    lost_at = time.perf_counter()
    stderr = survivor.communicate(timeout=60)[1]
    assert survivor.returncode == 1, stderr[-3000:]
    assert time.perf_counter() - lost_at < 20  # the collective failed at once (timeout: 10 s)
    last = stderr.strip().splitlines()[-1]
    assert last.startswith('artrm train: process 1 of this 2-process run is gone (')
    assert last.endswith('they resume from the last checkpoint.')

    for p in launch('preempted', SIGTERM_AT=['-1', '5']):
      stderr = p.communicate(timeout=120)[1]
      assert p.returncode == preemption.EXIT_CODE, stderr[-3000:]
      assert 'Stopped by SIGTERM to process 1 after step 5,' in stderr.strip().splitlines()[-1]
    assert [r['step'] for r in workdir_lib.read_metrics(workdir, 'preempted')] == [5]
    assert 5 in workdir_lib.checkpoint_steps(workdir)

    for p in launch('finished'):
      assert p.wait(timeout=120) == 0, p.stderr.read()[-3000:]
  finally:
    for p in started:
      p.kill()
  got = [(r['step'], r['kind']) for r in records(workdir)]
  assert len(got) == len(set(got)) and {s for s, kind in got if kind == 'train'} == set(range(1, 9))
  assert [r['step'] for r in workdir_lib.read_metrics(workdir, 'setup')] == [0, 2, 5]
  assert workdir_lib.read_final_eval(workdir)['step'] == 8
