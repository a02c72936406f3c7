"""`artrm <command>`: thin entry points over the library.

  artrm                      the main job: the seven-rung ladder on CPU (= `artrm main`)
  artrm train --config=artrm/configs/length_gen.py:model=trm,runlocal --workdir=runs/x
  artrm eval  --workdir=runs/x [--checkpoint=best] [--lengths=10,20] [--decoding=sample]
  artrm suite --suite=experiments/length_gen.py:runlocal --root=workdirs/length_gen_cpu
              [--launcher=local|slurm|tpu] [--slots=2] [--gpus=0,1] [--dry_run]
  artrm gather --root=workdirs/length_gen_cpu [--out=results.csv]
  artrm report --root=workdirs/length_gen_cpu --out=docs/results/length_gen_cpu
  artrm bench  --setup=small|paper|eval [--rungs=gpt,trm] [--steps=20] [--dtype=bfloat16] [--out=x.json]

`python -m artrm ...` is the same.
"""

import functools
import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_COMMANDS = ('main', 'train', 'eval', 'suite', 'gather', 'report', 'bench')

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file[:arg] (train).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, metrics, evaluations.')
flags.DEFINE_string('checkpoint', 'latest', "eval: 'latest', 'best' or a step number.")
flags.DEFINE_list('lengths', None, 'eval: lengths to evaluate (default: the run\'s eval.lengths).')
flags.DEFINE_integer('n_samples', None, 'eval: prompts per length.')
flags.DEFINE_enum('decoding', None, ['greedy', 'sample'], 'eval: decoding rule.')
flags.DEFINE_integer('inference_steps', None, 'eval: steps to run (weight-tied rungs).')
flags.DEFINE_bool('full_compute', None, 'eval: disable every early stop.')
flags.DEFINE_bool('kv_cache', None, 'eval: KV-cached decoding (--nokv_cache: full recompute).')
flags.DEFINE_string('task', 'copy', 'main: task of the ladder comparison.')
flags.DEFINE_integer('max_steps', None, 'main: training steps per rung.')
flags.DEFINE_string('suite', None, 'suite: experiments/<file>.py[:arg].')
flags.DEFINE_string('root', None, 'suite / gather / report: directory holding the runs of a suite.')
flags.DEFINE_enum('launcher', 'local', ['local', 'slurm', 'tpu'], 'suite: where to run.')
flags.DEFINE_integer('slots', 1, 'suite: runs at once (per GPU with --gpus).')
flags.DEFINE_list('gpus', None, 'suite: GPU ids for a one-run-per-GPU queue.')
flags.DEFINE_bool('dry_run', False, 'suite: print what would run or be submitted.')
flags.DEFINE_list('inference_sweep', None,
                  'suite: instead of training, re-evaluate finished weight-tied runs with '
                  'these numbers of inference steps (the inference-scaling study).')
flags.DEFINE_string('tpu_name', None, 'suite --launcher=tpu: TPU VM name.')
flags.DEFINE_string('zone', None, 'suite --launcher=tpu: its zone.')
flags.DEFINE_string('slurm_time', '02:00:00', 'suite --launcher=slurm: time limit per run.')
flags.DEFINE_string('out', None, 'gather: table path (.csv or .parquet); report: output directory.')
flags.DEFINE_string('setup', 'small', 'bench: small, paper or eval (--out: its JSON path, default '
                    'benchmarks/results/<device>_<setup>.json; --full_compute: no early stop).')
flags.DEFINE_list('rungs', None, 'bench: rungs to measure (default: all seven).')
flags.DEFINE_integer('steps', 20, 'bench: timed training steps (median reported).')
flags.DEFINE_integer('warmup', 3, 'bench: untimed steps after compilation.')
flags.DEFINE_integer('eval_repeats', 5, 'bench: timed decoding calls per length.')
flags.DEFINE_list('eval_lengths', None, 'bench: decoding lengths (default: the setup\'s).')
flags.DEFINE_integer('eval_batch', None, 'bench: prompts per decoded batch (default 100).')
flags.DEFINE_string('remat', None, 'bench: model.remat, a key of models.block.REMAT_POLICIES '
                    '(default: the training config\'s).')
flags.DEFINE_enum('dtype', None, ['float32', 'bfloat16'], 'bench: model.dtype, the compute dtype '
                  '(default: the training config\'s, float32; bfloat16 on GPUs).')
flags.DEFINE_list('versus_paper', None,
                  'bench: only print saved CPU results (JSON paths) against the paper\'s code.')
flags.DEFINE_float('peak_flops', None, 'bench: device peak FLOP/s for MFU (default: known GPUs).')
flags.DEFINE_string('profile_dir', None, 'bench: also write a profiler trace per rung there and '
                    'summarise it (time per model region and op kind) in the JSON.')
flags.DEFINE_integer('devices', 1, 'bench: train and decode data-parallel over this many local '
                     'devices (CPU: XLA_FLAGS=--xla_force_host_platform_device_count=N makes them).')


def _train(argv):
  del argv
  if FLAGS.config is None or FLAGS.workdir is None:
    raise app.UsageError('artrm train needs --config=<file>[:arg] and --workdir=<dir>.')
  from artrm import parallel
  from artrm.training import train
  parallel.maybe_initialize_distributed()
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


def _eval(argv):
  del argv
  if FLAGS.workdir is None:
    raise app.UsageError('artrm eval needs --workdir=<dir of a training run>.')
  from artrm.training import eval_checkpoint
  overrides = {k: getattr(FLAGS, k) for k in ('n_samples', 'decoding', 'inference_steps',
                                              'full_compute', 'kv_cache') if getattr(FLAGS, k) is not None}
  if FLAGS.lengths:
    overrides['lengths'] = [int(L) for L in FLAGS.lengths]
  eval_checkpoint.evaluate_checkpoint(FLAGS.workdir, FLAGS.checkpoint, overrides, verbose=True)


def _suite(argv):
  del argv
  if not (FLAGS.suite and FLAGS.root):
    raise app.UsageError('artrm suite needs --suite=experiments/<file>.py[:arg] and --root=<dir>.')
  from artrm.tools import launch
  if FLAGS.inference_sweep:
    launch.inference_sweep(FLAGS.suite, FLAGS.root, [int(n) for n in FLAGS.inference_sweep])
  elif FLAGS.launcher == 'local':
    codes = launch.run_local(FLAGS.suite, FLAGS.root, slots=FLAGS.slots, gpus=FLAGS.gpus,
                             dry_run=FLAGS.dry_run)
    if any(codes):
      sys.exit(f'{sum(c != 0 for c in codes)} run(s) failed; re-run the command to retry them.')
  elif FLAGS.launcher == 'slurm':
    launch.submit_slurm(FLAGS.suite, FLAGS.root, dry_run=FLAGS.dry_run, time_limit=FLAGS.slurm_time)
  else:
    if not (FLAGS.tpu_name and FLAGS.zone):
      raise app.UsageError('--launcher=tpu needs --tpu_name and --zone.')
    launch.launch_tpu(FLAGS.suite, FLAGS.root, dry_run=FLAGS.dry_run, tpu_name=FLAGS.tpu_name,
                      zone=FLAGS.zone)


def _gather(argv):
  del argv
  if not FLAGS.root:
    raise app.UsageError('artrm gather needs --root=<dir of a suite>.')
  from artrm.tools import results
  path = results.write_table(results.gather(FLAGS.root),
                             FLAGS.out or os.path.join(FLAGS.root, 'results.csv'))
  print(f'wrote {path}')


def _report(argv):
  del argv
  if not (FLAGS.root and FLAGS.out):
    raise app.UsageError('artrm report needs --root=<dir of a suite> and --out=<dir>.')
  from artrm.tools import report
  print(f'wrote {report.make_report(FLAGS.root, FLAGS.out)}')


def _bench(argv):
  del argv
  from artrm import bench
  if FLAGS.versus_paper:
    for path in FLAGS.versus_paper:
      with open(path) as f:
        result = json.load(f)
      print(f'{path}\n{bench.markdown(result, bench.versus_paper(result))}\n')
    return
  setup = bench.get_setup(FLAGS.setup).replace(
      eval_lengths=FLAGS.eval_lengths and tuple(int(L) for L in FLAGS.eval_lengths),
      eval_batch=FLAGS.eval_batch, remat=FLAGS.remat, dtype=FLAGS.dtype)
  result = bench.run_benchmark(setup, FLAGS.rungs or tuple(bench.RUNGS), steps=FLAGS.steps,
                               warmup=FLAGS.warmup, eval_repeats=FLAGS.eval_repeats,
                               full_compute=bool(FLAGS.full_compute), peak=FLAGS.peak_flops,
                               devices=FLAGS.devices, profile_dir=FLAGS.profile_dir,
                               verbose=True)
  print('\n' + bench.markdown(result))
  print(f'wrote {bench.write_results(result, FLAGS.out)}')


def _main(argv):
  del argv
  from artrm.tools import ladder
  ladder.run_ladder(FLAGS.workdir or 'workdirs/ladder', task=FLAGS.task, max_steps=FLAGS.max_steps)


def main():
  argv = list(sys.argv)
  command = argv.pop(1) if len(argv) > 1 and argv[1] in _COMMANDS else 'main'
  if len(argv) > 1 and not argv[1].startswith('-'):
    sys.exit(f'Unknown command {argv[1]!r}; choose one of {list(_COMMANDS)}.')
  commands = {'main': _main, 'train': _train, 'eval': _eval, 'suite': _suite, 'gather': _gather,
              'report': _report, 'bench': _bench}
  app.run(functools.partial(_quiet, commands[command]), argv=argv)


def _quiet(fn, argv):
  """Orbax logs every save at INFO; keep the terminal to progress and results."""
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  fn(argv)
