"""Compile seconds of the fresh-state program (`train_state.init_seeds`: params, optimizer state,
3 seeds vmapped) at XLA:CPU's default optimisation level (3) and with `artrm.one_off`'s options,
and whether the two give the same bits, per rung at the CPU studies' shape (copy, width
64, budget 12) or another width.

    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false taskset -c 0 python benchmarks/one_off_init.py \
      --width=64 --out=results/benchmarks/cpu2_one_off_init_64.json
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.getcwd())  # the checkout it is run from, not the installed one

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from artrm import one_off  # noqa: E402
from artrm.models import RUNGS  # noqa: E402
from artrm.tools import suites  # noqa: E402
from artrm.training import builders, train_state  # noqa: E402

SUITE = 'experiments/why_trm.py:runlocal,only=copy'
RECIPES = {  # besides each rung plain: the full TRM recipe, the input and carry norms
  'trm+full_recipe': {
    'recipe.n_sup': 4,
    'recipe.halt_loss_weight': 0.5,
    'recipe.ema_decay': 0.99,
    'recipe.fixed_init': True,
  },
  'trm+norms': {'recipe.carry_norm': True, 'recipe.input_norm': True},
}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--width', type=int, default=64)
  parser.add_argument('--out')
  args = parser.parse_args()
  cases = {r: {'model.name': r} for r in RUNGS}
  cases.update({k: {'model.name': 'trm', **v} for k, v in RECIPES.items()})
  out = {}
  for case, overrides in cases.items():
    path, arg = suites.split_spec(SUITE)
    c = suites.apply_overrides(
      suites.load_suite_module(path).get_config(arg),
      {'task': 'copy', 'model.n_embd': args.width, **overrides},
    )
    model = builders.run_model(c)
    optimizer = train_state.make_optimizer(c.optimizer, model.recipe)
    seeds = jnp.asarray(train_state.seeds_of(c), jnp.int32)
    lowered = jax.jit(train_state.stacked_states(model, optimizer)).lower(seeds)
    row, bits = {}, {}
    for name, options in (
      ('default', None),
      ('one_off', one_off.CPU_OPTIONS),
    ):
      t = time.perf_counter()
      compiled = lowered.compile(compiler_options=options)
      row[f'{name}_compile_seconds'] = time.perf_counter() - t
      bits[name] = [np.asarray(x) for x in jax.tree.leaves(compiled(seeds))]
    row['same_bits'] = all(map(np.array_equal, bits['default'], bits['one_off']))
    out[case] = row
    print(case, {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(
        dict(width=args.width, suite=SUITE, options=one_off.CPU_OPTIONS, rungs=out), f, indent=1
      )


if __name__ == '__main__':
  main()
