"""H-L structure: ut_level2 and trm on addition over an (H, L) grid and train lengths.

n_layer 4 fixed (no budget rule), n_embd 128, 4 heads, 2000 steps, eval at 1x..3x the train length.
  artrm suite --suite=experiments/hl_structure.py --root=workdirs/hl_structure
  artrm suite --suite=experiments/hl_structure.py:runlocal --root=workdirs/hl_structure_cpu
"""

from artrm.configs import length_gen

HL = ((1, 1), (2, 2), (2, 1), (4, 2), (6, 2), (8, 2), (8, 4))
TRAIN_LENGTHS = (2, 5, 10, 20)


def get_config(arg=None):
  c, a = length_gen.suite_config(arg)
  c.budget = 0
  c.model.update(n_layer=1 if a.runlocal else 4, block_size=200)
  if not a.runlocal:
    c.model.update(n_embd=128, n_head=4)
  c.max_steps = 200 if a.runlocal else 2000
  return c


def get_sweep(arg=None):
  local = 'runlocal' in (arg or '')
  hl, lengths = (HL[:3], TRAIN_LENGTHS[:2]) if local else (HL, TRAIN_LENGTHS)
  return [
    {
      'model.name': name,
      'model.n_outer_loops': H,
      'model.n_inner_loops': L,
      'train_length': n,
      'eval.lengths': (n, 2 * n, 3 * n),
    }
    for name in ('ut_level2', 'trm')
    for H, L in hl
    for n in lengths
  ]
