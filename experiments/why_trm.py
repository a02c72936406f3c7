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
  report:      artrm report --root=workdirs/why_trm_cpu --out=results/studies/why_trm_cpu
  the carry:   python experiments/carry_growth.py --root=workdirs/why_trm_cpu --task=copy
The answer, with the commands that made results/studies/why_trm_cpu: docs/science.md.
Arguments besides `runlocal`, `seeds=N`, `steps=N`: `only=copy` (one task),
`core` (the 22 rows that answer the question first, of 29) and `rows=N` (the
first N rows: references first, then gradient reach; `rows=-8`: the last 8,
the probes of what `grad_reach=all` adds, of the carry and of the input).

`addform` selects the CPU form in which addition is learned (found by
experiments/addition_form.py: train L 3, 64 wide, batch 32, warmup + cosine
lr 3e-3 for every row; eval at 3 and 6) and `part=` one of its row sets:
`decon` (the input fix taken apart: scale, step size, normalisation),
`depth` (the headline rows at budget 24: trm runs 4 steps), `rank` (the
ranking on addition at matched training compute, `seeds=5`), `recipe`
(TRM's recipe on top of the fix, with compute controls); `rows=N` keeps a part's
first N rows, `rows=-N` its last N (decon's first 15 take the input apart, the next 3
are the ranking's, the last 2 scale the input by sqrt(C)):

  python -m artrm suite --suite=experiments/why_trm.py:runlocal,addform,part=decon --root=workdirs/why_trm_add --slots=2
  python -m artrm suite --suite=experiments/why_trm.py:runlocal,addform,part=decon,rows=15,only=copy --root=workdirs/why_trm_add --slots=2

`fix` (without `addform`) selects the fix's rows at the form's scale (`fix_rows`); at the
paper's scale on one GPU, stacked (3 tasks x 3 seeds per program):

  SUITE=experiments/why_trm.py:fix,dtype=bfloat16 OUT=/results/why_trm BENCH_RUNGS= F32_RUNGS= LEVERS= launch/gpu_paper_table.sh

The paper form is the length-generalisation setting (budget 24: trm runs 4
steps of 2 x (2 + 1) passes; 5000 steps, train L 10, eval 10 and 20). The CPU
form uses `runlocal` (64 wide, batch 32) at budget 12 (trm: 2 steps of
2 x (2 + 1) passes, so the steps and the detaching differ from ut_level2's
ACT), train L 5, eval 5 and 10, 400 steps.
"""

from artrm.configs import length_gen
from artrm.models.config import ModelConfig, get_rung, normalize_budget
from artrm.models.recipe import Recipe, compute_record
from artrm.tools import suites

TASKS = ('copy', 'reverse', 'addition')


def rows(max_steps: int, forward_passes: int, core: bool = False) -> list[dict]:
  """The study's rows; `core`: those that answer the question first (references,
  gradient reach, deep supervision with its control, each other ingredient,
  the full recipe with its control, the probes of the input and the carry).

  EMA: TRM's 0.999 averages over ~1000 steps; the 400-step CPU form uses 0.99
  (0.999 ** 400 = 0.67 of the weight would stay on the initial params).
  """
  ema = 0.99 if max_steps < 2000 else 0.999
  full = {
    'recipe.n_sup': 4,
    'recipe.halt_loss_weight': 0.5,
    'recipe.ema_decay': ema,
    'recipe.fixed_init': True,
  }
  trm = {'model.name': 'trm'}
  # As many forward passes as n_sup = n, evaluated as often per run.
  control = lambda n: trained_for(trm, n * max_steps)
  refs = [{'model.name': 'gpt'}, {'model.name': 'ut_level1'}, {'model.name': 'ut_level2'}, trm]
  reach = [{**trm, 'recipe.grad_reach': r} for r in ('last_step', 'all')]
  deep = lambda n: [{**trm, 'recipe.n_sup': n, 'recipe.grad_reach': r} for r in ('paper', 'all')]
  singles = [
    {**trm, 'recipe.halt_loss_weight': 0.5},
    {**trm, 'recipe.ema_decay': ema},
    {**trm, 'recipe.fixed_init': True},
  ]
  # What `all` adds over `last_step`, split: gradient into the earlier step
  # (reach 3/4 of the forward, so it crosses one step boundary) and gradient
  # into the learned y0 / z0 (`all` with them fixed).
  # And the carry: TRM's post-norm (carry_norm) keeps y and z at unit RMS,
  # where the paper's pre-norm streams grow geometrically over the passes.
  probes = [
    {**trm, 'recipe.grad_reach': 'last_k', 'recipe.grad_last_k': 3 * forward_passes // 4},
    {**trm, 'recipe.grad_reach': 'all', 'recipe.fixed_init': True},
    {**trm, 'recipe.carry_norm': True},
    {'model.name': 'ut_level2', 'recipe.carry_norm': True},
    # TRM's deep supervision once the input is seen (before the input probes, so
    # that rows=-3 stays the three below).
    {**trm, 'recipe.carry_norm': True, 'recipe.input_norm': True, 'recipe.n_sup': 2},
    # ... and the input's visibility: x (std 0.02 embeddings) against the carry.
    {**trm, 'recipe.input_norm': True},
    {**trm, 'recipe.carry_norm': True, 'recipe.input_norm': True},
    {'model.name': 'ut_level2', 'recipe.carry_norm': True, 'recipe.input_norm': True},
  ]
  if core:
    return refs + reach + deep(2) + [control(2)] + singles + [{**trm, **full}, control(4)] + probes
  return (
    refs
    + reach
    + [{**trm, 'recipe.grad_reach': 'last_k', 'recipe.grad_last_k': k} for k in (6, 12)]
    + [{'model.name': 'ut_level2', 'recipe.grad_reach': r} for r in ('last_step', 'all')]
    + deep(2)
    + [control(2)]
    + deep(4)
    + [control(4)]
    + singles
    + [{**trm, **full}, {**trm, **full, 'recipe.mixer': 'mlp', 'eval.kv_cache': False}]
    + probes
  )


# The CPU form in which gpt and ut_level1 learn addition (experiments/addition_form.py).
ADDFORM = {
  'train_length': 3,
  'model.n_embd': 64,
  'batch_size': 32,
  'max_steps': 2000,
  'optimizer.learning_rate': 3e-3,
  'optimizer.schedule': 'warmup_cosine',
  'optimizer.warmup_steps': 100,
}
PARTS = ('decon', 'depth', 'rank', 'recipe')


def train_passes_per_token(row: dict, budget: int) -> int:
  mc = normalize_budget(ModelConfig(name=row['model.name']), budget)
  recipe = Recipe(**{k[len('recipe.') :]: v for k, v in row.items() if k.startswith('recipe.')})
  return compute_record(get_rung(mc.name), mc, recipe)['train_passes_per_token']


def matched_compute(row: dict, max_steps: int, budget: int) -> dict:
  """`row` trained for as many steps as give gpt's training passes (steps x passes per token)."""
  steps = max_steps * train_passes_per_token({'model.name': 'gpt'}, budget)
  steps //= train_passes_per_token(row, budget)
  return trained_for(row, steps)


def trained_for(row: dict, steps: int) -> dict:
  """`row` trained for `steps`, evaluated as often per run (learning curves of 10 points)."""
  return {**row, 'max_steps': steps, 'eval.every_steps': steps // 10}


TRM = {'model.name': 'trm'}
# The fix the decon part found best: the carry bounded, the input at unit RMS by a
# constant scale (~ 1 / 0.028); `NORMS` is the first fix (both norms).
SCALE = {'recipe.carry_norm': True, 'recipe.input_scale': 36.0}
NORMS = {**TRM, 'recipe.input_norm': True, 'recipe.carry_norm': True}
FIXED = {**TRM, **SCALE}
REFS = [{'model.name': 'gpt'}, {'model.name': 'ut_level1'}]


def decon_rows(max_steps: int, lr: float, budget: int) -> list[dict]:
  """The input fix taken apart. Scale up with the relative step kept (input_norm,
  input_scale); scale up with the relative step 50x smaller (embed_init_std 1); the
  step alone 36x larger (embed_lr_mult), and every step larger (lr x3, x10); then the
  same split with the carry bounded (where the input alone does not suffice, which of
  scale or step size completes carry_norm). Rows 16-18 are the ranking's; the last 2
  scale the input by sqrt(C), as TRM scales its embeddings."""
  split = [
    {'recipe.input_scale': 36.0},  # ~ 1 / 0.028: unit RMS at init
    {'optimizer.embed_lr_mult': 36.0},
    {'recipe.embed_init_std': 1.0},
  ]
  carry = {**TRM, 'recipe.carry_norm': True}
  return (
    REFS
    + [TRM, {**TRM, 'recipe.input_norm': True}]
    + [{**TRM, **x} for x in split]
    + [NORMS, carry]
    + [{**carry, **x} for x in split]
    + [{**TRM, 'optimizer.learning_rate': float(f'{k * lr:g}')} for k in (3, 10)]
    + [
      {**TRM, 'recipe.grad_reach': 'all'},
      # The fixed trm at gpt's training compute (it back-propagates fewer passes).
      matched_compute(NORMS, max_steps, budget),
      # The dual UTs with the scale fix too, so that the ranking compares repaired models.
      {'model.name': 'ut_level1', **SCALE},
      {'model.name': 'ut_level2', **SCALE},
    ]
    # TRM's own embedding scale, sqrt(C) (8 at width 64), alone and with the carry bounded.
    + [{**row, 'recipe.input_scale': ADDFORM['model.n_embd'] ** 0.5} for row in (TRM, carry)]
  )


def depth_rows() -> list[dict]:
  """The headline rows at budget 24 (trm: 4 recursion steps)."""
  headline = [TRM, FIXED, NORMS, {**TRM, 'recipe.input_norm': True}]
  headline += [{**TRM, 'recipe.grad_reach': 'all'}] + REFS
  return [{**row, 'budget': 24} for row in headline]


def rank_rows(max_steps: int, budget: int) -> list[dict]:
  """The same steps for all, then matched training compute: steps x training passes
  per token equal to gpt's (the detaching rows back-propagate fewer passes)."""
  ut2 = {'model.name': 'ut_level2', **SCALE}
  ut1 = {'model.name': 'ut_level1', **SCALE}
  same = [FIXED, ut1, ut2, {**TRM, 'recipe.grad_reach': 'all'}] + REFS
  return same + [matched_compute(row, max_steps, budget) for row in (FIXED, ut2)]


def recipe_rows(max_steps: int) -> list[dict]:
  """TRM's recipe on the fixed trm; deep supervision with its forward-pass control.
  The cheaper rows first: 4 supervision passes and their control cost 4x a row."""
  sup = lambda n, update: {**FIXED, 'recipe.n_sup': n, 'recipe.sup_update': update}
  control = lambda n: trained_for(FIXED, n * max_steps)
  return [FIXED, sup(2, 'each'), control(2)] + [
    {**FIXED, 'recipe.halt_loss_weight': 0.5},
    {**FIXED, 'recipe.ema_decay': 0.999},
    sup(2, 'accumulate'),
    sup(4, 'each'),
    control(4),
  ]


def addform_rows(part: str, max_steps: int, lr: float, budget: int) -> list[dict]:
  """The row sets of the addition form; `part` names one (PARTS)."""
  parts = {
    'decon': lambda: decon_rows(max_steps, lr, budget),
    'depth': depth_rows,
    'rank': lambda: rank_rows(max_steps, budget),
    'recipe': lambda: recipe_rows(max_steps),
  }
  if part not in parts:
    raise ValueError(f'part={part!r}: choose one of {list(PARTS)}.')
  return parts[part]()


def fix_rows() -> list[dict]:
  """The fix at any scale: the references, the paper's trm, trm fixed by the norms, by the
  input scale and by gradient everywhere, and the dual nested UT with the scale fix."""
  rows = REFS + [TRM, NORMS, FIXED, {**TRM, 'recipe.grad_reach': 'all'}]
  return rows + [{'model.name': 'ut_level2', **SCALE}]


def get_config(arg=None):
  c, _ = parsed(arg)
  return c


def parsed(arg):
  c, a = length_gen.suite_config(
    arg, only='', core=False, rows=0, addform=False, part='decon', fix=False
  )
  if a.runlocal:
    c.budget = 12
    c.train_length = 5
  if a.addform:
    suites.apply_overrides(c, ADDFORM)
    c.max_steps = a.steps or c.max_steps
  c.eval.lengths = (c.train_length, 2 * c.train_length)
  c.eval.every_steps = c.max_steps // 10  # learning curves of 10 points
  return c, a


def get_sweep(arg=None):
  c, a = parsed(arg)
  tasks = (a.only,) if a.only else TASKS
  if a.addform:
    every = addform_rows(a.part, c.max_steps, c.optimizer.learning_rate, c.budget)
  elif a.fix:
    every = fix_rows()
  else:
    every = rows(c.max_steps, c.budget, a.core)
  return [{'task': task, **row} for task in tasks for row in suites.pick_rows(every, a.rows)]
