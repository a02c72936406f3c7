"""How big the carried y / z of trained dual-stream runs get, step by step.

The paper's dual recursion sums its streams back into every pass
(`z <- B(x + y + z)`, `y <- B(y + z)`) through a pre-norm block, which adds its
attention and MLP terms to its input: the streams grow geometrically with the
passes, while the input x (token + position embeddings, initialised at std
0.02) enters every z-update at its own small scale. For every finished
dual-stream run of a suite, this loads its last checkpoint and runs fixed
training-length prompts (teacher-forced, every step run) with 1..S steps: the
RMS of x, and of y and z at the end, and next-token accuracy on the answer.

  python experiments/carry_growth.py --root=workdirs/why_trm_cpu --task=copy \
      --out=results/studies/why_trm_cpu/carry_growth.md
"""

import os

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from artrm import workdir as workdir_lib
from artrm.data import python_batch
from artrm.models import RUNGS
from artrm.tables import markdown_table
from artrm.training import eval_checkpoint, train_state

flags.DEFINE_string('root', None, 'Suite root holding the runs.', required=True)
flags.DEFINE_string('out', None, 'Markdown file for the table (default: print only).')
flags.DEFINE_list('steps', ['1', '2', '4', '8'], 'Recursion steps to run each model with.')
flags.DEFINE_integer('n', 64, 'Prompts per run (one fixed batch).')
flags.DEFINE_string('task', '', 'Only the runs of this task (default: every run).')
FLAGS = flags.FLAGS


def rms(a: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.mean(jnp.square(a.astype(jnp.float32))))


def measure(workdir: str, steps: list[int], n: int) -> list[dict]:
  """A row per recursion-step count: mean over seeds of RMS(y), RMS(z) and accuracy."""
  config, model, state, step = eval_checkpoint.load_checkpoint(workdir)
  batch = python_batch(config.task, config.train_length, np.random.default_rng(0), n)
  inputs, targets = jnp.asarray(batch['inputs']), jnp.asarray(batch['targets'])
  answer = targets >= 0
  rows = []
  for s in steps:

    @jax.jit
    @jax.vmap  # over the run's seeds
    def measure_seed(params, s=s):
      logits, aux = model.apply({'params': params}, inputs, inference_steps=s, full_compute=True)
      hit = (logits.argmax(-1) == targets) & answer
      x = model.apply({'params': params}, inputs, method='embed')
      return (rms(x), *(rms(a) for a in aux['carry']), hit.sum() / answer.sum())

    x_rms, y_rms, z_rms, acc = (
      float(v.mean()) for v in measure_seed(train_state.eval_params(state))
    )
    rows.append(
      dict(
        steps=s,
        rms_x=f'{x_rms:.3g}',
        rms_y=f'{y_rms:.3g}',
        rms_z=f'{z_rms:.3g}',
        char_acc=f'{acc:.3f}',
      )
    )
  return [dict(run=os.path.basename(workdir), trained_step=step, **r) for r in rows]


def main(argv):
  del argv
  steps = [int(s) for s in FLAGS.steps]
  rows = []
  for name in sorted(os.listdir(FLAGS.root)):
    workdir = os.path.join(FLAGS.root, name)
    if workdir_lib.read_final_eval(workdir) is None:  # not a finished run
      continue
    config = workdir_lib.read_config(workdir)
    if RUNGS[config['model']['name']].stream == 'dual' and FLAGS.task in ('', config['task']):
      rows += measure(workdir, steps, FLAGS.n)
  table = markdown_table(rows)
  print(table)
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      f.write(
        '# Carry growth: RMS of y and z after each number of recursion steps\n\n'
        f'Made by `python experiments/carry_growth.py --root={FLAGS.root} --task={FLAGS.task} '
        f'--steps={",".join(FLAGS.steps)} --out={FLAGS.out}` '
        f"from each run's last checkpoint; {FLAGS.n} fixed training-length prompts, "
        "teacher-forced, every step run, mean over the run's seeds. The runs were "
        'trained with the number of steps their budget gives (2 in the CPU form).\n\n'
        + table
        + '\n'
      )


if __name__ == '__main__':
  app.run(main)
