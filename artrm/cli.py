"""`artrm <command>`: thin entry points over the library.

  artrm                      the main job: the seven-rung ladder on CPU (= `artrm main`)
  artrm train --config=artrm/configs/length_gen.py:model=trm,runlocal --workdir=runs/x
  artrm eval  --workdir=runs/x [--checkpoint=best] [--lengths=10,20] [--decoding=sample]

`python -m artrm ...` is the same.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

_COMMANDS = ('main', 'train', 'eval')

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file[:arg] (train).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, metrics, evaluations.')
flags.DEFINE_string('checkpoint', 'latest', "eval: 'latest', 'best' or a step number.")
flags.DEFINE_list('lengths', None, 'eval: lengths to evaluate (default: the run\'s eval.lengths).')
flags.DEFINE_integer('n_samples', None, 'eval: prompts per length.')
flags.DEFINE_enum('decoding', None, ['greedy', 'sample'], 'eval: decoding rule.')
flags.DEFINE_integer('inference_steps', None, 'eval: steps to run (weight-tied rungs).')
flags.DEFINE_bool('full_compute', None, 'eval: disable every early stop.')
flags.DEFINE_string('task', 'copy', 'main: task of the ladder comparison.')
flags.DEFINE_integer('max_steps', None, 'main: training steps per rung.')


def _train(argv):
  del argv
  if FLAGS.config is None or FLAGS.workdir is None:
    raise app.UsageError('artrm train needs --config=<file>[:arg] and --workdir=<dir>.')
  from artrm import parallel, train
  parallel.maybe_initialize_distributed()
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


def _eval(argv):
  del argv
  if FLAGS.workdir is None:
    raise app.UsageError('artrm eval needs --workdir=<dir of a training run>.')
  from artrm import eval_checkpoint
  overrides = {k: getattr(FLAGS, k) for k in ('n_samples', 'decoding', 'inference_steps',
                                              'full_compute') if getattr(FLAGS, k) is not None}
  if FLAGS.lengths:
    overrides['lengths'] = [int(L) for L in FLAGS.lengths]
  eval_checkpoint.evaluate_checkpoint(FLAGS.workdir, FLAGS.checkpoint, overrides, verbose=True)


def _main(argv):
  del argv
  from artrm import ladder
  ladder.run_ladder(FLAGS.workdir or 'workdirs/ladder', task=FLAGS.task, max_steps=FLAGS.max_steps)


def main():
  argv = list(sys.argv)
  command = argv.pop(1) if len(argv) > 1 and argv[1] in _COMMANDS else 'main'
  if len(argv) > 1 and not argv[1].startswith('-'):
    sys.exit(f'Unknown command {argv[1]!r}; choose one of {list(_COMMANDS)}.')
  app.run({'main': _main, 'train': _train, 'eval': _eval}[command], argv=argv)
