"""Programs a process runs once, such as fresh params, compiled for compile time.

Such a program spends its time compiling, not running: at XLA:CPU's optimisation
level 1 the fresh state compiles several times faster than at the default level (3)
(docs/performance.md, "A study on this CPU"), and computes the same bits
(`tests/test_train.py::test_one_off_init_keeps_its_bits`).
Training, evaluation and decoding programs keep the default.
"""

import os

import jax

CPU_OPTIONS = {'xla_backend_optimization_level': 1}


def compiler_options() -> dict | None:
  """`CPU_OPTIONS` on a CPU backend, unless XLA_FLAGS chooses the level itself."""
  if jax.default_backend() != 'cpu' or 'xla_backend_optimization_level' in os.environ.get(
    'XLA_FLAGS', ''
  ):
    return None
  return CPU_OPTIONS


def jit(fn):
  """`jax.jit(fn)` for a program run once; call it outside any other jit."""
  return jax.jit(fn, compiler_options=compiler_options())
