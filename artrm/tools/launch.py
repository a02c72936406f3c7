"""Running a suite: here (a queue over CPU slots or GPUs), on SLURM, on a TPU pod.

Every launcher executes the same `artrm train` line per run (suites.train_command),
so a run is resumable wherever it is started: re-launching skips finished
runs and resumes the rest from their checkpoints.
"""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

from artrm import parallel
from artrm import workdir as workdir_lib
from artrm.tools import suites
from artrm.training import preemption


def pending_runs(spec: str, root: str) -> tuple[list[suites.Run], list[suites.Run]]:
  """(runs to do, runs already finished)."""
  todo, done = [], []
  for run in suites.suite_runs(spec, root):
    (done if suites.is_finished(run, suites.run_config(spec, run)) else todo).append(run)
  return todo, done


def cpu_slots(slots: int | None) -> list[list[int]]:
  """The cores of each CPU slot: `slots` None is one slot per core, the faster
  arrangement for a suite on a small CPU host (docs/performance.md, "A study on
  this CPU")."""
  cores = sorted(os.sched_getaffinity(0))
  n = slots or len(cores)
  if n >= len(cores):
    return [[cores[i % len(cores)]] for i in range(n)]
  return [cores[i::n] for i in range(n)]


def _places(slots: int | None, gpus: list[str] | None, log) -> list[tuple[dict, list | None, str]]:
  """Where runs go: (extra env, cores to pin or None, where in words) per slot."""
  if gpus:
    return [
      ({'CUDA_VISIBLE_DEVICES': g}, None, f' on GPU {g}') for g in gpus for _ in range(slots or 1)
    ]
  places = [
    (
      # One core: XLA:CPU's own thread pools would only contend with the other runs.
      {'XLA_FLAGS': '--xla_cpu_multi_thread_eigen=false'}
      if len(cores) == 1 and 'XLA_FLAGS' not in os.environ
      else {},
      cores,
      f' on core{"s" * (len(cores) > 1)} {",".join(map(str, cores))}',
    )
    for cores in cpu_slots(slots)
  ]
  default = ' (one per core: the faster arrangement on CPU; --slots=1 for one run on all)'
  log(f'{len(places)} run(s) at a time, each pinned to its cores' + (default * (slots is None)))
  return places


@contextlib.contextmanager
def _forwarding_sigterm(running: dict, stopping: threading.Event):
  """SIGTERM to the launcher (a scheduler's preemption, `kill`) goes on to every run in
  flight, which checkpoints and exits; no queued run starts after it. Ctrl-C needs no
  help: the terminal signals the whole process group."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def forward(signum, frame):
    stopping.set()
    for proc in list(running):
      with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)

  previous = signal.signal(signal.SIGTERM, forward)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def _start(job: list[suites.Run], place, command, root: str):
  """A job's subprocess in `place`, its output appended to its first run's log."""
  run = job[0]
  extra_env, cores, _ = place
  env = {**os.environ, **extra_env}
  # Runs that differ only in data (a suite's tasks of one shape) compile once.
  env.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(os.path.abspath(root), '.jax_cache'))
  os.makedirs(run.workdir, exist_ok=True)
  out = open(workdir_lib.path(run.workdir, workdir_lib.STDOUT), 'a')
  proc = subprocess.Popen(
    command(job),
    env=env,
    stdout=out,
    stderr=subprocess.STDOUT,
    preexec_fn=None if cores is None else (lambda c=cores: os.sched_setaffinity(0, c)),
  )
  return proc, out


def _status(proc, run: suites.Run) -> str:
  if proc.returncode == 0:
    return 'done'
  if proc.returncode == preemption.EXIT_CODE:
    return 'stopped by a signal with a checkpoint; re-run the command to resume'
  return f'FAILED ({proc.returncode}); see {workdir_lib.path(run.workdir, workdir_lib.STDOUT)}'


def _run_queue(jobs: list[list[suites.Run]], places, command, root: str, log) -> list[int]:
  """Each job (a stack of runs) as a subprocess in the first free place; their exit codes.
  On SIGTERM the runs in flight are stopped with a checkpoint and the rest not started."""
  os.makedirs(root, exist_ok=True)
  free, running, codes = list(places), {}, []
  queue, stopping = list(jobs), threading.Event()
  with _forwarding_sigterm(running, stopping):
    while (queue and not stopping.is_set()) or running:
      while queue and free and not stopping.is_set():
        job, place = queue.pop(0), free.pop(0)
        proc, out = _start(job, place, command, root)
        running[proc] = (job[0], place, out, time.perf_counter())
        more = f' (+{len(job) - 1} stacked with it)' if len(job) > 1 else ''
        where = place[2]  # (env, cores, where): ' on core 0', ' on GPU 1'
        log(f'start {job[0].name}{more}{where}')
      time.sleep(0.5)
      for proc in [p for p in running if p.poll() is not None]:
        run, place, out, start = running.pop(proc)
        out.close()
        free.append(place)
        codes.append(proc.returncode)
        log(f'{_status(proc, run)}: {run.name} in {time.perf_counter() - start:.0f}s')
  if stopping.is_set():
    log(f'stopped by SIGTERM: {len(queue)} job(s) not started; re-run the command to resume')
  return codes


def run_local(
  spec: str,
  root: str,
  *,
  slots: int | None = None,
  gpus: list[str] | None = None,
  dry_run: bool = False,
  stack: str = 'off',
  max_stack: int = 0,
  log=print,
) -> list[int]:
  """Runs the suite's pending runs as a queue of subprocesses; returns exit codes.

  `gpus` (e.g. ['0', '1']): each run sees one GPU (CUDA_VISIBLE_DEVICES) and
  `slots` (default 1) runs share a GPU. Without GPUs, `slots` runs go side by
  side, each pinned to its share of the cores (`cpu_slots`; default one run
  per core, single-threaded). `stack` (`suites.STACK_MODES`): runs that differ
  only in task and seeds train as one program of at most `max_stack` runs.
  """
  todo, done = pending_runs(spec, root)
  log(f'{len(done)} finished, {len(todo)} to run ({len(suites.suite_runs(spec, root))} in suite)')
  jobs = suites.stacks(spec, todo, stack, max_stack)
  if len(jobs) < len(todo):
    log(f'{len(todo)} runs in {len(jobs)} stacks (--stack={stack})')
  places = _places(slots, gpus, log)
  command = lambda job: suites.stack_command(spec, root, job, stack)
  if dry_run:
    for i, job in enumerate(jobs):
      env = places[i % len(places)][0]
      log(''.join(f'{k}={v} ' for k, v in env.items()) + suites.shell_line(command(job)))
    return []
  return _run_queue(jobs, places, command, root, log)


def exit_for(codes: list[int]):
  """A failed run fails the command; runs stopped with a checkpoint (and none failed)
  exit with `preemption.EXIT_CODE`, so that a scheduler requeues the suite."""
  failed = sum(c not in (0, preemption.EXIT_CODE) for c in codes)
  if failed:
    sys.exit(f'{failed} run(s) failed; re-run the command to retry them.')
  if any(codes):
    print('artrm suite: stopped with checkpoints; re-run the command to resume.', file=sys.stderr)
    sys.exit(preemption.EXIT_CODE)


# The suite root's list of `artrm train` lines, one per array task (launch/slurm.sh reads it).
SLURM_RUNS = 'slurm_runs.txt'

SLURM_TEMPLATE = """#!/bin/bash
#SBATCH --job-name={job_name}
#SBATCH --array=0-{last}%{max_parallel}
{hosts_lines}#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task={cpus}
#SBATCH --time={time}
#SBATCH --requeue
#SBATCH --signal=B:TERM@{signal_secs}
#SBATCH --output={root}/slurm-%A_%a.out
{extra}
# One line of {runs_file} per array task. Each is an `artrm train` command
# that resumes from its checkpoint, so a requeued or re-submitted task
# continues where it stopped and a finished one returns at once.
set -euo pipefail
cd {repo}
LINE=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {runs_file})
# {signal_secs} s before the time limit SLURM sends this shell SIGTERM, passed on to the
# run: it saves a checkpoint and exits with {requeue_code}, and the task goes back in the queue.
# The trap is set before the run starts: a signal that comes before `RUN` is known is kept.
STOP=0; RUN=
trap 'STOP=1; if [ -n "$RUN" ]; then kill -TERM "$RUN" 2>/dev/null || true; fi' TERM INT
{run} &
RUN=$!
if [ "$STOP" -eq 1 ]; then kill -TERM "$RUN" 2>/dev/null || true; fi
while true; do  # until the run ends: a trapped signal interrupts `wait` (status > 128)
  RC=0; wait "$RUN" || RC=$?
  if [ "$RC" -le 128 ]; then break; fi
  # The run may have ended meanwhile: `wait` then returns its own status, kept by bash.
  if ! kill -0 "$RUN" 2>/dev/null; then RC=0; wait "$RUN" || RC=$?; break; fi
done
if [ "$RC" -eq {requeue_code} ]; then scontrol requeue "$SLURM_JOB_ID"; exit 0; fi
exit "$RC"
"""

SLURM_ONE_HOST = 'eval "exec $LINE"'

# Several nodes, one process each, train one run: process 0's node is the
# coordinator (port: ARTRM_PORT, or one from the job id), SLURM_PROCID the rank.
SLURM_MULTIHOST = '\n'.join(
  [
    f'export {parallel.COORDINATOR_ENV}='
    '"$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):'
    '${ARTRM_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"',
    f'export {parallel.NUM_PROCESSES_ENV}="$SLURM_NTASKS"',
    'exec srun --kill-on-bad-exit=1 bash -c '
    f'"export {parallel.PROCESS_ID_ENV}=\\$SLURM_PROCID; $LINE"',
  ]
)


def slurm_submission(
  spec: str,
  root: str,
  *,
  job_name: str = 'artrm',
  time_limit: str = '02:00:00',
  max_parallel: int = 8,
  cpus: int = 8,
  extra: str = '',
  hosts: int = 1,
  python: str = 'python',
  signal_secs: int = 180,
  stack: str = 'off',
  max_stack: int = 0,
) -> tuple[str, str]:
  """(sbatch script, runs file) for the suite's pending runs; each run (or stack of runs,
  `run_local`) on `hosts` nodes.

  `signal_secs` before the time limit the run is asked to stop (SIGTERM), which leaves it
  time to finish its step and save; it is then requeued (`preemption.EXIT_CODE`)."""
  if hosts < 1:
    raise ValueError(f'hosts={hosts}: a run needs at least one node.')
  todo, _ = pending_runs(spec, root)
  if not todo:
    raise ValueError(f'Every run of {spec} in {root} is finished: nothing to submit.')
  runs_file = os.path.join(root, SLURM_RUNS)
  todo = suites.stacks(spec, todo, stack, max_stack)
  lines = '\n'.join(
    suites.shell_line(suites.stack_command(spec, root, job, stack, python=python)) for job in todo
  )
  hosts_lines = f'#SBATCH --nodes={hosts}\n#SBATCH --ntasks-per-node=1\n' if hosts > 1 else ''
  script = SLURM_TEMPLATE.format(
    job_name=job_name,
    last=len(todo) - 1,
    max_parallel=max_parallel,
    hosts_lines=hosts_lines,
    cpus=cpus,
    time=time_limit,
    root=root,
    extra=extra,
    runs_file=runs_file,
    repo=os.getcwd(),
    run=SLURM_MULTIHOST if hosts > 1 else SLURM_ONE_HOST,
    signal_secs=signal_secs,
    requeue_code=preemption.EXIT_CODE,
  )
  return script, lines + '\n'


def submit_slurm(spec: str, root: str, *, dry_run: bool, log=print, **kwargs) -> str:
  script, lines = slurm_submission(spec, root, **kwargs)
  script_path = os.path.join(root, 'slurm_array.sbatch')
  if dry_run:
    log(
      f'# would write {script_path}:\n{script}\n# and {os.path.join(root, SLURM_RUNS)}:\n{lines}'
      f'# and run: sbatch {script_path}'
    )
    return script
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, SLURM_RUNS), 'w') as f:
    f.write(lines)
  with open(script_path, 'w') as f:
    f.write(script)
  out = subprocess.run(['sbatch', script_path], check=True, capture_output=True, text=True).stdout
  log(out.strip())
  return script


# Run on every host of a Cloud TPU VM / pod: its number, the host count and worker 0's address
# from the VM's metadata (as jax.distributed finds them itself), port ARTRM_PORT or 8476.
TPU_PROCESS_ENV = (
  'md() { curl -sf -H Metadata-Flavor:Google '
  'http://metadata.google.internal/computeMetadata/v1/instance/attributes/$1; }; '
  'HOSTS=$(md worker-network-endpoints | tr , "\\n" | awk -F: "{print \\$NF}"); '
  f'export {parallel.COORDINATOR_ENV}=$(echo "$HOSTS" | head -n 1):${{ARTRM_PORT:-8476}} '
  f'{parallel.NUM_PROCESSES_ENV}=$(echo "$HOSTS" | wc -l) '
  f'{parallel.PROCESS_ID_ENV}=$(md agent-worker-number); '
)


def tpu_command(
  spec: str,
  root: str,
  *,
  tpu_name: str,
  zone: str,
  repo_dir: str = '~/artrm',
  project: str | None = None,
) -> list[str]:
  """gcloud command running the suite on every host of a TPU VM / pod.

  Each host executes the same queue, one run at a time, as one process of
  that run (`TPU_PROCESS_ENV`). `root` must be a filesystem every host sees
  (NFS, or a gcsfuse mount of a bucket), so that all hosts agree on which
  runs are finished.
  """
  inner = (
    f'cd {repo_dir} && {TPU_PROCESS_ENV}python -m artrm suite '
    f'--suite={spec} --root={root} --launcher=local'
  )
  cmd = [
    'gcloud',
    'compute',
    'tpus',
    'tpu-vm',
    'ssh',
    tpu_name,
    f'--zone={zone}',
    '--worker=all',
    f'--command={inner}',
  ]
  if project:
    cmd.insert(5, f'--project={project}')
  return cmd


def launch_tpu(spec: str, root: str, *, dry_run: bool, log=print, **kwargs):
  cmd = tpu_command(spec, root, **kwargs)
  if dry_run:
    log(suites.shell_line(cmd))
    return cmd
  subprocess.run(cmd, check=True)
  return cmd


def inference_sweep(spec: str, root: str, steps: list[int | str], log=print) -> list[str]:
  """Re-evaluates every finished weight-tied run with each number of inference steps
  (or multiple of its trained steps, '2x': `eval_checkpoint.resolve_steps`)."""
  from artrm.models import get_rung
  from artrm.training import eval_checkpoint

  _, done = pending_runs(spec, root)
  evaluated = []
  for run in done:
    if get_rung(suites.run_config(spec, run).model.name).tied:
      eval_checkpoint.inference_scaling(run.workdir, steps)
      evaluated.append(run.name)
      log(f'inference steps {steps}: {run.name}')
  return evaluated
