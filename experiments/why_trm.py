"""Why the Autoregressive TRM fails: the TRM recipe added one ingredient at a time.

Every row trains `trm` (or `ut_level2` where the ingredient applies) at the
paper's forward budget, next to the paper's recipe, `ut_level1` (the paper's
best) and `gpt`; a control trains the paper's `trm` for as many forward block
passes as each deep-supervised row (n_sup x the steps). Copy, reverse and
addition, 3 seeds each (vmapped), evaluated at the training length and at 2x.
Each run's setup record and the results table carry its compute (forward
passes, passes with gradient, training passes per token, inference passes per
token; docs/compute.md).

  paper scale: artrm suite --suite=experiments/why_trm.py --root=workdirs/why_trm
  CPU form:    artrm suite --suite=experiments/why_trm.py:runlocal --root=workdirs/why_trm_cpu
  report:      artrm report --root=workdirs/why_trm_cpu --out=docs/results/why_trm_cpu

The paper form is the length-generalisation setting (budget 24: trm runs 4
steps of 2 x (2 + 1) passes; 5000 steps, train L 10, eval 10 and 20). The CPU
form uses `runlocal` (64 wide, batch 32) at budget 12 (trm: 2 steps of
2 x (2 + 1) passes, so the steps and the detaching differ from ut_level2's
ACT), train L 5, eval 5 and 10, 400 steps.
"""

from artrm.configs import length_gen

TASKS = ('copy', 'reverse', 'addition')
FULL = {
  'recipe.n_sup': 4,
  'recipe.halt_loss_weight': 0.5,
  'recipe.ema_decay': 0.999,
  'recipe.fixed_init': True,
}


def rows(max_steps: int) -> list[dict]:
  trm = {'model.name': 'trm'}
  out = [{'model.name': 'gpt'}, {'model.name': 'ut_level1'}, {'model.name': 'ut_level2'}, trm]
  out += [{**trm, 'recipe.grad_reach': r} for r in ('last_step', 'all')]
  out += [{**trm, 'recipe.grad_reach': 'last_k', 'recipe.grad_last_k': k} for k in (6, 12)]
  out += [{'model.name': 'ut_level2', 'recipe.grad_reach': r} for r in ('last_step', 'all')]
  for n in (2, 4):
    out += [{**trm, 'recipe.n_sup': n, 'recipe.grad_reach': r} for r in ('paper', 'all')]
    out.append({**trm, 'max_steps': n * max_steps})  # the compute-matched control
  out += [
    {**trm, 'recipe.halt_loss_weight': 0.5},
    {**trm, 'recipe.ema_decay': 0.999},
    {**trm, 'recipe.fixed_init': True},
  ]
  out += [{**trm, **FULL}, {**trm, **FULL, 'recipe.mixer': 'mlp', 'eval.kv_cache': False}]
  return out


def get_config(arg=None):
  c, a = length_gen.suite_config(arg)
  if a.runlocal:
    c.budget = 12
    c.train_length = 5
  c.eval.lengths = (c.train_length, 2 * c.train_length)
  return c


def get_sweep(arg=None):
  max_steps = get_config(arg).max_steps
  return [{'task': task, **row} for task in TASKS for row in rows(max_steps)]
