"""Suites, launchers and the results store."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from artrm.tools import launch, results, suites
from artrm.training import preemption

TINY_SUITE = textwrap.dedent("""
    from artrm.configs import length_gen

    def get_config(arg=None):
      a = length_gen.parse_arg(arg, seeds=2)
      c = length_gen.get_config('model=gpt,task=copy,runlocal')
      c.model.update(n_embd=32, n_head=2, block_size=24)
      c.update(budget=2, train_length=3, batch_size=16, max_steps=4, num_seeds=a.seeds)
      c.eval.update(lengths=(3, 4), every_steps=2, n_samples=8, batch_size=8)
      c.log.every_steps = 2
      return c

    def get_sweep(arg=None):
      return [{'model.name': name, 'task': 'copy'} for name in ('gpt', 'ut')]
    """)


@pytest.fixture
def suite_file(tmp_path):
  path = tmp_path / 'tiny_suite.py'
  path.write_text(TINY_SUITE)
  return str(path)


def test_suite_runs_names_and_commands(suite_file, tmp_path):
  runs = suites.suite_runs(suite_file, str(tmp_path / 'root'))
  assert [r.name for r in runs] == ['name=gpt,task=copy', 'name=ut,task=copy']
  cmd = suites.train_command(suite_file, runs[1])
  assert cmd[1:4] == ['-m', 'artrm', 'train']
  assert '--config.model.name=ut' in cmd and f'--workdir={runs[1].workdir}' in cmd
  config = suites.run_config(suite_file, runs[1])
  assert (config.model.name, config.num_seeds) == ('ut', 2)
  with pytest.raises(KeyError, match='not a config field'):
    suites.apply_overrides(config, {'model.n_layers': 3})


def test_sigterm_to_the_local_queue_stops_its_runs_and_starts_no_more(tmp_path):
  """A scheduler's SIGTERM to `artrm suite` reaches every run in flight (each exits as a
  stopped run does), no queued run starts, and the command asks to be requeued."""
  ready = tmp_path / 'ready'
  child = textwrap.dedent(f"""
      import pathlib, signal, sys, time
      signal.signal(signal.SIGTERM, lambda *_: sys.exit({preemption.EXIT_CODE}))
      pathlib.Path({str(ready)!r}).touch()
      time.sleep(60)
      """)
  jobs = [[suites.Run(f'r{i}', {}, str(tmp_path / f'r{i}'), i)] for i in range(3)]
  places = [({}, None, '')]  # one slot: r0 runs, r1 and r2 wait

  def stop_when_ready():
    while not ready.exists():
      time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)

  threading.Thread(target=stop_when_ready, daemon=True).start()
  logs, before = [], signal.getsignal(signal.SIGTERM)
  start = time.perf_counter()
  codes = launch._run_queue(
    jobs, places, lambda job: [sys.executable, '-c', child], '.', logs.append
  )
  assert codes == [preemption.EXIT_CODE] and time.perf_counter() - start < 30
  assert not any('start r1' in m for m in logs) and '2 job(s) not started' in logs[-1]
  assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
  with pytest.raises(SystemExit) as stopped:
    launch.exit_for(codes)
  assert stopped.value.code == preemption.EXIT_CODE
  with pytest.raises(SystemExit, match='1 run'):
    launch.exit_for([0, preemption.EXIT_CODE, 1])


def test_local_queue_runs_skips_and_resumes(suite_file, tmp_path):
  """(a)/(b): a queue over two slots; a re-launch skips finished runs, finishes the rest."""
  root = str(tmp_path / 'root')
  logs = []
  codes = launch.run_local(suite_file, root, gpus=['a', 'b'], log=logs.append)
  assert codes == [0, 0], open(os.path.join(root, 'name=gpt,task=copy', 'stdout.log')).read()
  assert any('on GPU a' in m for m in logs) and any('on GPU b' in m for m in logs)
  todo, done = launch.pending_runs(suite_file, root)
  assert not todo and len(done) == 2

  # An interrupted run (its final evaluation missing) is resumed, the finished one skipped.
  os.remove(os.path.join(root, 'name=ut,task=copy', 'final_eval.json'))
  logs.clear()
  assert launch.run_local(suite_file, root, log=logs.append) == [0]
  assert logs[0].startswith('1 finished, 1 to run')
  assert 'one per core' in logs[1] and ' on core ' in logs[2]  # the CPU default, pinned

  # ut trained 2 steps: '2x' runs 4, each a block pass per token.
  swept = launch.inference_sweep(suite_file, root, [1, '2x'], log=logs.append)
  assert swept == ['name=ut,task=copy']

  rows = results.gather(root)
  scaling = {
    (r['inference_steps'], r['inference_passes'], r['seed'])
    for r in rows
    if r['kind'] == 'inference'
  }
  assert scaling == {(n, n, s) for n in (1, 4) for s in (1337, 1338)}
  final = [r for r in rows if r['kind'] == 'final' and r['metric'] == 'seq_acc']
  assert {(r['model'], r['seed'], r['eval_length']) for r in final} == {
    (m, s, L) for m in ('gpt', 'ut') for s in (1337, 1338) for L in (3, 4)
  }
  assert any(r['kind'] == 'curve' and r['step'] == 2 for r in rows)
  path = results.write_table(rows, str(tmp_path / 'table.csv'))
  assert open(path).readline().strip().split(',') == results.COLUMNS


def test_local_dry_run_prints_commands(suite_file, tmp_path):
  lines = []
  assert (
    launch.run_local(suite_file, str(tmp_path), gpus=['0', '1'], dry_run=True, log=lines.append)
    == []
  )
  assert lines[1].startswith('CUDA_VISIBLE_DEVICES=0 ') and lines[2].startswith(
    'CUDA_VISIBLE_DEVICES=1 '
  )
  assert not os.path.exists(tmp_path / 'name=gpt,task=copy')


def test_cpu_slots_pin_runs_to_cores(monkeypatch):
  monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {3, 0, 1, 2})
  assert launch.cpu_slots(None) == [[0], [1], [2], [3]]  # the default: one run per core
  assert launch.cpu_slots(1) == [[0, 1, 2, 3]]
  assert launch.cpu_slots(2) == [[0, 2], [1, 3]]
  assert launch.cpu_slots(6) == [[0], [1], [2], [3], [0], [1]]


def test_slurm_dry_run(suite_file, tmp_path):
  out = []
  script = launch.submit_slurm(
    suite_file, str(tmp_path), dry_run=True, log=out.append, time_limit='00:30:00'
  )
  assert '#SBATCH --array=0-1%8' in script and '#SBATCH --requeue' in script
  assert '#SBATCH --time=00:30:00' in script
  assert 'sed -n "$((SLURM_ARRAY_TASK_ID + 1))p"' in script
  text = out[0]
  assert text.count('-m artrm train') == 2 and '--config.model.name=ut' in text
  assert not os.path.exists(tmp_path / 'slurm_array.sbatch'), 'dry run writes nothing'
  assert 'srun' not in script and '--nodes' not in script  # one node per run unless asked
  multi = launch.submit_slurm(suite_file, str(tmp_path), dry_run=True, log=out.append, hosts=2)
  assert '#SBATCH --nodes=2' in multi and 'srun' in multi  # tests/test_multihost.py runs it


def test_tpu_dry_run(suite_file, tmp_path):
  out = []
  cmd = launch.launch_tpu(
    suite_file, str(tmp_path), dry_run=True, log=out.append, tpu_name='v4-32', zone='us-central2-b'
  )
  assert cmd[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'v4-32']
  assert '--worker=all' in cmd
  assert (
    'ARTRM_PROCESS_ID=' in out[0] and f'--suite={suite_file}' in out[0]
  )  # tests/test_multihost.py runs it


def test_suite_files_load():
  """Every suite under experiments/ builds its configs (paper and CPU forms)."""
  root = os.path.join(os.path.dirname(__file__), '..', 'experiments')
  for name in (
    'length_gen',
    'compute_optimal',
    'hl_structure',
    'scaling',
    'train_length',
    'why_trm',
    'length_beyond',
    'addition_form',
  ):
    for arg in ('', ':runlocal'):
      spec = os.path.join(root, f'{name}.py') + arg
      runs = suites.suite_runs(spec, '/tmp/unused')
      configs = [suites.run_config(spec, r) for r in runs]
      assert configs and all(c.num_seeds == 3 for c in configs), spec
  paper = suites.suite_runs(os.path.join(root, 'length_gen.py'), '/tmp/unused')
  assert len(paper) == 21
  two = suites.suite_runs(os.path.join(root, 'length_gen.py:only=reverse+addition'), '/tmp/unused')
  assert [r.overrides['task'] for r in two] == ['addition'] * 7 + ['reverse'] * 7
  with pytest.raises(ValueError, match='tasks are addition'):
    suites.suite_runs(os.path.join(root, 'length_gen.py:only=add'), '/tmp/unused')


def test_length_beyond_rows_pass_the_checks_before_any_work():
  """Every row, with its abacus offset, gaps or count-down, passes the length checks
  (evaluation at 3L reads only digit indices training reaches); gaps go to the abacus
  rows alone, offsets to the learned abacus table alone."""
  from artrm.training import validation

  spec = os.path.join(os.path.dirname(__file__), '..', 'experiments', 'length_beyond.py')
  args = (
    ':runlocal',
    ':runlocal,gap=3,offset=0',
    ':runlocal,fixed,length=3',
    ':down,only=reverse',
    '',
  )
  for arg in args:
    for r in suites.suite_runs(spec + arg, '/tmp/unused'):
      validation.check_config(suites.run_config(spec + arg, r))
  runs = suites.suite_runs(spec + ':runlocal,gap=3,only=copy,models=gpt', '/tmp/unused')
  gaps = {r.overrides['model.pos_encoding']: r.overrides.get('model.abacus_max_gap') for r in runs}
  assert gaps == {'learned': None, 'none': None, 'rope': None, 'abacus': 3, 'abacus_rope': 3}
  offsets = {
    r.overrides['model.pos_encoding']: r.overrides.get('model.abacus_max_offset') for r in runs
  }
  assert offsets == {'learned': None, 'none': None, 'rope': None, 'abacus': 20, 'abacus_rope': None}
  with pytest.raises(ValueError, match='models are gpt'):
    suites.suite_runs(spec + ':models=gtp', '/tmp/unused')


def test_why_trm_rows_are_valid_recipes():
  """Every row of the study builds its model (its recipe fits its rung)."""
  from artrm.training import builders

  spec = os.path.join(os.path.dirname(__file__), '..', 'experiments', 'why_trm.py:runlocal')
  runs = suites.suite_runs(spec, '/tmp/unused')
  assert len(runs) == 3 * 29
  core = suites.suite_runs(spec + ',core,only=copy', '/tmp/unused')
  assert len(core) == 22 and all(r.overrides['task'] == 'copy' for r in core)
  first = suites.suite_runs(spec + ',core,only=copy,rows=6', '/tmp/unused')
  assert [r.name for r in first] == [r.name for r in core[:6]]
  last = suites.suite_runs(spec + ',core,only=copy,rows=-8', '/tmp/unused')
  assert [r.name for r in last] == [r.name for r in core[-8:]]
  for r in runs:
    model = builders.run_model(suites.run_config(spec, r))
    assert model.rung.block_passes(model.config) == 12


def test_carry_growth_measures_a_dual_stream_run(tmp_path):
  """experiments/carry_growth.py on a tiny trained trm: x, y, z RMS per step count."""
  import importlib.util

  from tiny import tiny_config

  from artrm.training import train

  c = tiny_config('trm', num_seeds=2, max_steps=2)
  c.budget = 6  # one step of H 2 x (L 2 + 1)
  c.recipe.input_norm = True
  c.eval.every_steps = c.checkpoint.every_steps = 2
  train.train_and_evaluate(c, str(tmp_path / 'trm'))
  path = os.path.join(os.path.dirname(__file__), '..', 'experiments', 'carry_growth.py')
  spec = importlib.util.spec_from_file_location('carry_growth', path)
  carry_growth = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(carry_growth)
  rows = carry_growth.measure(str(tmp_path / 'trm'), [1, 3], n=4)
  assert [r['steps'] for r in rows] == [1, 3] and rows[0]['trained_step'] == 2
  assert float(rows[0]['rms_x']) == pytest.approx(1, abs=0.02)  # input_norm (eps 1e-5)
  assert float(rows[1]['rms_y']) > 5 * float(rows[0]['rms_y'])  # the pre-norm carry grows


def test_time_box_runs_the_tasks_that_fit(tmp_path):
  """The GPU script's plan: serial estimates per task from a bench (the H200's, committed),
  and `only=` the tasks that fit, at least the first."""
  from artrm.tools import time_box

  bench = os.path.join(os.path.dirname(__file__), '..', 'results', 'benchmarks', 'h200_paper.json')
  shutil.copy(bench, tmp_path / 'paper_bfloat16_five.json')
  rows = time_box.bench_rows(str(tmp_path))
  assert sorted(rows) == ['gpt', 'gpt_level1', 'gpt_level2', 'ut', 'ut_level1']
  assert time_box.bench_rows(bench) == rows, 'a folder of bench JSONs or one JSON'
  spec = os.path.join(os.path.dirname(__file__), '..', 'experiments', 'length_gen.py:seeds=1')
  every = time_box.plan(spec, rows, 1e9)
  assert every['only'] == '' and every['tasks_that_fit'] == ['addition', 'copy', 'reverse']
  first = every['estimated_seconds_by_task']['addition']
  gpt = rows['gpt']['step_seconds'] * 5000 + rows['gpt']['compile_seconds']
  ut_at_init = rows['ut']['step_seconds'] * 5000 + rows['ut']['compile_seconds']
  assert first > gpt > 60 and gpt > ut_at_init
  # ut ran 2.3 passes at initialisation, the unbenched rungs get the mean: all count at
  # least gpt's step, the one row that ran the whole budget
  two = {r: rows[r] for r in ('gpt', 'ut')}
  compile_s = [two[r]['compile_seconds'] for r in two]
  want = 7 * 5000 * rows['gpt']['step_seconds'] + sum(compile_s) + 5 * np.mean(compile_s)
  got = time_box.plan(spec, two, 1e9)['estimated_seconds_by_task']['addition']
  assert got == pytest.approx(want, 1e-9)
  assert time_box.plan(spec, rows, first + 1)['only'] == 'addition'
  assert time_box.plan(spec, rows, 1)['only'] == 'addition'
  assert len(suites.suite_runs(spec + ',only=addition', '/unused')) == 7
  assert time_box.plan(spec, {}, 1)['only'] == ''


PREEMPTIBLE = (
  'import signal, sys, time; '
  'signal.signal(signal.SIGTERM, lambda *a: sys.exit(75)); print(1, flush=True); time.sleep(60)'
)


def test_slurm_script_passes_sigterm_on_and_requeues_a_preempted_run(suite_file, tmp_path):
  """SLURM signals the batch shell (`--signal=B:TERM@...`): the script passes it on to the
  run, and on the run's preemption exit code asks SLURM to requeue the task."""
  root = tmp_path / 'root'
  script, _ = launch.slurm_submission(suite_file, str(root), signal_secs=90)
  assert '#SBATCH --signal=B:TERM@90' in script
  root.mkdir()
  (root / launch.SLURM_RUNS).write_text(f"{sys.executable} -c '{PREEMPTIBLE}'\n")
  (tmp_path / 'scontrol').write_text('#!/bin/sh\necho "$@" >> "$0.calls"\n')
  (tmp_path / 'scontrol').chmod(0o755)
  env = dict(os.environ, PATH=f'{tmp_path}:{os.environ["PATH"]}', SLURM_ARRAY_TASK_ID='0')
  proc = subprocess.Popen(
    ['bash', '-c', script], env=dict(env, SLURM_JOB_ID='7'), stdout=subprocess.PIPE, text=True
  )
  assert proc.stdout.readline() == '1\n'  # the run is up
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=30) == 0
  assert (tmp_path / 'scontrol.calls').read_text() == 'requeue 7\n'
