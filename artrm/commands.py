"""The commands of `artrm`: each one's summary, example, flags and what it runs.

Each command owns its flags (an absl FlagValues of its own, `artrm.cli.flag_values`);
its run imports the library or tooling it needs only when it runs, so `artrm --help`
stays fast.
"""

import os
import sys
from typing import Callable, NamedTuple, Sequence

from absl import flags
from ml_collections import config_flags


class Command(NamedTuple):
  summary: str  # its line in `artrm --help`
  example: str
  define: Callable[[flags.FlagValues, Sequence[str]], None]  # its flags (argv: --config's)
  run: Callable[[flags.FlagValues], None]
  required: tuple[str, ...] = ()


def _main_flags(fv, argv):
  del argv
  flags.DEFINE_string(
    'workdir', 'workdirs/ladder', 'Where the seven runs and ladder.md go.', flag_values=fv
  )
  flags.DEFINE_string(
    'task', 'copy', 'Task of the comparison: copy, reverse or addition.', flag_values=fv
  )
  flags.DEFINE_integer('max_steps', None, 'Training steps per rung (default: 300).', flag_values=fv)


def _main(f):
  from artrm.tools import ladder

  ladder.run_ladder(f.workdir, task=f.task, max_steps=f.max_steps)


def _train_flags(fv, argv):
  config_flags.DEFINE_config_file(
    'config',
    None,
    'Config file[:arg]; override any field with --config.<field>=<value>.',
    flag_values=fv,
    lock_config=True,
    sys_argv=['artrm', *argv],
  )
  flags.DEFINE_string(
    'workdir',
    None,
    'Run directory: checkpoints, metrics, evaluations. A run there is resumed.',
    flag_values=fv,
  )


def _train(f):
  from artrm.training import train

  _training('train', lambda: train.train_and_evaluate(f.config, f.workdir))


def _training(command: str, fn: Callable[[], object]):
  """Runs `fn` (training) as a command: a stop request exits with `preemption.EXIT_CODE`, a
  lost peer with one line."""
  from artrm import parallel
  from artrm.training import preemption

  parallel.maybe_initialize_distributed()
  try:
    fn()
  except preemption.Preempted as e:
    print(f'artrm {command}: {e}', file=sys.stderr)
    sys.exit(preemption.EXIT_CODE)
  except Exception as e:
    if (lost := parallel.lost_peer(e)) is None or os.environ.get('ARTRM_TRACEBACK'):
      raise
    print(f'artrm {command}: {lost}', file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)  # now: JAX's orderly exit would wait for the lost process, then abort


def _stack_flags(fv, argv):
  del argv
  flags.DEFINE_string('suite', None, 'experiments/<file>.py[:arg].', flag_values=fv)
  flags.DEFINE_string(
    'root', None, "Directory of the suite's runs, one workdir each.", flag_values=fv
  )
  flags.DEFINE_list('runs', None, "The runs: indices in the suite's sweep.", flag_values=fv)
  flags.DEFINE_bool('pad', False, "Pad rows to the longest task's (train_seq_len).", flag_values=fv)


def _stack(f):
  from artrm.tools import suites
  from artrm.training import stacking, train

  runs = suites.suite_runs(f.suite, f.root)
  try:
    picked = [runs[int(i)] for i in f.runs]
  except (ValueError, IndexError):
    sys.exit(f'artrm stack: --runs={",".join(f.runs)}: indices 0..{len(runs) - 1} of the suite.')
  configs = [suites.run_config(f.suite, run) for run in picked]
  if f.pad:
    stacking.pad_rows(configs)
  _training('stack', lambda: train.train_stack(configs, [run.workdir for run in picked]))


def _eval_flags(fv, argv):
  del argv
  flags.DEFINE_string('workdir', None, 'Directory of a training run.', flag_values=fv)
  flags.DEFINE_string('checkpoint', 'latest', "'latest', 'best' or a step number.", flag_values=fv)
  flags.DEFINE_list(
    'lengths', None, "Lengths to evaluate (default: the run's eval.lengths).", flag_values=fv
  )
  flags.DEFINE_integer(
    'n_samples', None, "Prompts per length (default: the run's).", flag_values=fv
  )
  flags.DEFINE_enum(
    'decoding', None, ['greedy', 'sample'], "Decoding rule (default: the run's).", flag_values=fv
  )
  flags.DEFINE_list(
    'inference_steps',
    None,
    'Steps to run, each evaluated in turn: numbers or multiples of the trained steps, '
    'e.g. 1x,2x,4x (weight-tied rungs; the maximum for ACT; default: as trained).',
    flag_values=fv,
  )
  flags.DEFINE_bool('full_compute', None, 'Disable every early stop.', flag_values=fv)
  flags.DEFINE_bool(
    'kv_cache', None, 'KV-cached decoding (--nokv_cache: full recompute).', flag_values=fv
  )


def _eval(f):
  from artrm.training import eval_checkpoint

  overrides = {
    k: getattr(f, k)
    for k in ('n_samples', 'decoding', 'full_compute', 'kv_cache')
    if getattr(f, k) is not None
  }
  if f.lengths:
    overrides['lengths'] = f.lengths  # checked by the library
  if f.inference_steps:
    eval_checkpoint.inference_scaling(
      f.workdir, f.inference_steps, f.checkpoint, overrides, verbose=True
    )
  else:
    eval_checkpoint.evaluate_checkpoint(f.workdir, f.checkpoint, overrides, verbose=True)


def _suite_flags(fv, argv):
  del argv
  flags.DEFINE_string('suite', None, 'experiments/<file>.py[:arg].', flag_values=fv)
  flags.DEFINE_string(
    'root', None, "Directory of the suite's runs, one workdir each.", flag_values=fv
  )
  flags.DEFINE_enum('launcher', 'local', ['local', 'slurm', 'tpu'], 'Where to run.', flag_values=fv)
  flags.DEFINE_integer(
    'slots',
    None,
    'local: runs at once (per GPU with --gpus, default 1; on CPU default one per core).',
    flag_values=fv,
  )
  flags.DEFINE_list('gpus', None, 'local: GPU ids for a one-run-per-GPU queue.', flag_values=fv)
  flags.DEFINE_bool('dry_run', False, 'Print what would run or be submitted.', flag_values=fv)
  flags.DEFINE_list(
    'inference_sweep',
    None,
    'Instead of training, re-evaluate finished weight-tied runs with these numbers of '
    'inference steps, or multiples of their trained steps (e.g. 1x,2x,4x).',
    flag_values=fv,
  )
  flags.DEFINE_string('tpu_name', None, 'tpu: TPU VM name.', flag_values=fv)
  flags.DEFINE_string('zone', None, 'tpu: its zone.', flag_values=fv)
  flags.DEFINE_string('slurm_time', '02:00:00', 'slurm: time limit per run.', flag_values=fv)
  flags.DEFINE_integer(
    'slurm_signal_secs',
    180,
    'slurm: seconds before the time limit at which a run is asked to stop; it saves a '
    'checkpoint and is requeued.',
    flag_values=fv,
  )
  flags.DEFINE_integer('hosts', 1, 'slurm: nodes per run, one process each.', flag_values=fv)
  flags.DEFINE_enum(
    'stack',
    None,
    ['off', 'layout', 'all'],
    'Runs that differ only in task and seeds trained as one program: layout (tasks of one '
    'row layout, each run as alone), all (rows padded to the longest), off. Default: layout '
    'with --gpus and on slurm, off on CPU (one run per core is faster there).',
    flag_values=fv,
  )
  flags.DEFINE_integer('max_stack', 0, 'Runs per stack at most (0: any).', flag_values=fv)


def _suite(f):
  from artrm.tools import launch

  if f.inference_sweep:
    launch.inference_sweep(f.suite, f.root, f.inference_sweep)  # checked per run
  elif f.launcher == 'local':
    codes = launch.run_local(
      f.suite,
      f.root,
      slots=f.slots,
      gpus=f.gpus,
      dry_run=f.dry_run,
      stack=f.stack or ('layout' if f.gpus else 'off'),
      max_stack=f.max_stack,
    )
    launch.exit_for(codes)
  elif f.launcher == 'slurm':
    launch.submit_slurm(
      f.suite,
      f.root,
      dry_run=f.dry_run,
      time_limit=f.slurm_time,
      hosts=f.hosts,
      signal_secs=f.slurm_signal_secs,
      stack=f.stack or 'layout',  # a GPU per array task
      max_stack=f.max_stack,
    )
  else:
    if not (f.tpu_name and f.zone):
      sys.exit('artrm suite --launcher=tpu needs --tpu_name and --zone.')
    launch.launch_tpu(f.suite, f.root, dry_run=f.dry_run, tpu_name=f.tpu_name, zone=f.zone)


def _root_and_out_flags(out_help: str):
  """gather's and report's flags: a suite's directory and where to write."""

  def define(fv, argv):
    del argv
    flags.DEFINE_string('root', None, "Directory of a suite's runs.", flag_values=fv)
    flags.DEFINE_string('out', None, out_help, flag_values=fv)

  return define


def _gather(f):
  from artrm.tools import results

  out = f.out or os.path.join(f.root, 'results.csv')
  print(f'wrote {results.write_table(results.gather(f.root), out)}')


def _report(f):
  from artrm.tools import report

  print(f'wrote {report.make_report(f.root, f.out)}')


def _bench_flags(fv, argv):
  del argv
  flags.DEFINE_string(
    'setup', 'small', 'small, paper or eval (benchmarks/README.md).', flag_values=fv
  )
  flags.DEFINE_list('rungs', None, 'Rungs to measure (default: all seven).', flag_values=fv)
  flags.DEFINE_integer('steps', 20, 'Timed training steps (median reported).', flag_values=fv)
  flags.DEFINE_integer('warmup', 3, 'Untimed steps after compilation.', flag_values=fv)
  flags.DEFINE_integer(
    'seeds',
    None,
    'Seeds vmapped in one training step, as suites run them (default 1).',
    flag_values=fv,
  )
  flags.DEFINE_integer('eval_repeats', 5, 'Timed decoding calls per length.', flag_values=fv)
  flags.DEFINE_list(
    'eval_lengths', None, "Decoding lengths (default: the setup's).", flag_values=fv
  )
  flags.DEFINE_integer(
    'eval_batch', None, 'Prompts per decoded batch (default 100).', flag_values=fv
  )
  flags.DEFINE_bool('full_compute', False, 'Decode with every early stop off.', flag_values=fv)
  flags.DEFINE_string(
    'remat',
    None,
    "model.remat, a key of models.block.REMAT_POLICIES (default: the training config's).",
    flag_values=fv,
  )
  flags.DEFINE_enum(
    'dtype',
    None,
    ['float32', 'bfloat16'],
    "model.dtype, the compute dtype (default: the training config's, float32).",
    flag_values=fv,
  )
  flags.DEFINE_float(
    'peak_flops', None, 'Device peak FLOP/s for MFU (default: known GPUs).', flag_values=fv
  )
  flags.DEFINE_integer(
    'devices',
    1,
    'Train and decode data-parallel over this many local '
    'devices (CPU: XLA_FLAGS=--xla_force_host_platform_device_count=N).',
    flag_values=fv,
  )
  flags.DEFINE_string(
    'profile_dir',
    None,
    'Also write a profiler trace per rung there and '
    'summarise it (time per model region and op kind) in the JSON.',
    flag_values=fv,
  )
  flags.DEFINE_string(
    'out', None, 'JSON path (default: benchmarks/results/<device>_<setup>.json).', flag_values=fv
  )


def _bench(f):
  from artrm.bench import formatting, setups, timing
  from artrm.models import RUNGS

  setup = setups.get_setup(f.setup).replace(
    eval_lengths=f.eval_lengths and tuple(int(L) for L in f.eval_lengths),
    eval_batch=f.eval_batch,
    remat=f.remat,
    dtype=f.dtype,
    num_seeds=f.seeds,
  )
  result = timing.run_benchmark(
    setup,
    f.rungs or tuple(RUNGS),
    steps=f.steps,
    warmup=f.warmup,
    eval_repeats=f.eval_repeats,
    full_compute=f.full_compute,
    peak=f.peak_flops,
    devices=f.devices,
    profile_dir=f.profile_dir,
    verbose=True,
  )
  print('\n' + formatting.markdown(result))
  print(f'wrote {formatting.write_results(result, f.out)}')


COMMANDS = {
  'main': Command(
    'the main job: train the seven rungs on CPU, print and save their table',
    'artrm --task=reverse --max_steps=500',
    _main_flags,
    _main,
  ),
  'train': Command(
    'train one run from a config (resumes one already in --workdir)',
    'artrm train --config=artrm/configs/length_gen.py:model=trm,runlocal '
    '--workdir=runs/trm --config.max_steps=500',
    _train_flags,
    _train,
    ('config', 'workdir'),
  ),
  'stack': Command(
    "train some of a suite's runs as one program (artrm suite --stack launches these)",
    'artrm stack --suite=experiments/length_gen.py:runlocal --root=workdirs/length_gen_cpu '
    '--runs=0,1,2',
    _stack_flags,
    _stack,
    ('suite', 'root', 'runs'),
  ),
  'eval': Command(
    "evaluate a run's checkpoint, at its own or new settings",
    'artrm eval --workdir=runs/trm --checkpoint=best --lengths=10,20',
    _eval_flags,
    _eval,
    ('workdir',),
  ),
  'suite': Command(
    'run every run of an experiment suite (local queue, Slurm or TPU VM)',
    'artrm suite --suite=experiments/length_gen.py:runlocal '
    '--root=workdirs/length_gen_cpu --slots=2',
    _suite_flags,
    _suite,
    ('suite', 'root'),
  ),
  'gather': Command(
    "collect a suite's results into one table",
    'artrm gather --root=workdirs/length_gen_cpu',
    _root_and_out_flags('Table path, .csv or .parquet (default: <root>/results.csv).'),
    _gather,
    ('root',),
  ),
  'report': Command(
    "draw a suite's figures and tables",
    'artrm report --root=workdirs/length_gen_cpu --out=results/studies/length_gen_cpu',
    _root_and_out_flags('Output directory: figures, tables, README.md.'),
    _report,
    ('root', 'out'),
  ),
  'bench': Command(
    "measure each rung's compile time, step time, FLOPs and decoding speed",
    'artrm bench --setup=small --rungs=gpt,trm --steps=5',
    _bench_flags,
    _bench,
  ),
}
