"""Beyond the training length: position encodings against recursion, with `gpt` as control.

Does a recursive rung generalise past its training length where `gpt` with the same
position encoding does not, and does more test-time recursion help? Rows: `gpt` (the
control: no recursion), `ut`, `ut_level1`, and `trm` and `ut_level2` with the input
scaled to unit RMS at init and the carry bounded (`recipe.input_scale=36`,
`recipe.carry_norm`: the fix under which trm learns addition), each with `model.pos_encoding`
learned (the paper's), none, rope, abacus and abacus_rope. Tasks copy, reverse and addition_rev (the
sum least-significant digit first). Every row trains on lengths drawn per row from 1..L
(`train_length_min=1`) and is evaluated at L, 1.5L, 2L and 3L; 3 seeds each (vmapped).

  screen:      artrm suite --suite=experiments/length_beyond.py:runlocal,screen --root=workdirs/length_beyond_screen_cpu
  CPU form:    artrm suite --suite=experiments/length_beyond.py:runlocal --root=workdirs/length_beyond_cpu
  depth:       artrm suite --suite=experiments/length_beyond.py:runlocal --root=workdirs/length_beyond_cpu --inference_sweep=1x,2x,4x
  report:      artrm report --root=workdirs/length_beyond_cpu --out=results/studies/length_beyond_cpu
  paper scale: artrm suite --suite=experiments/length_beyond.py --root=workdirs/length_beyond
The depth command re-evaluates the finished recursive runs of the same suite at 1x, 2x and
4x their trained steps (for ACT rungs, the raised maximum); use the training command's
suite argument, so that it finds the same runs. docs/length.md has the switches.

Arguments besides `runlocal`, `seeds=N`, `dtype=...`, `steps=N`:
  screen      one seed, the rows of gpt, ut and trm only: what learns at all
  models=M    only these models' rows, joined by `+` (e.g. models=gpt+trm)
  encodings=E only these position encodings, joined by `+` (e.g. encodings=learned+abacus)
  only=T      those tasks' rows, joined by `+` (e.g. only=copy+addition_rev; addition too)
  addition    adds the paper's addition (most-significant digit first) to the tasks
  inject      adds `ut` with `model.input_injection` (x re-added at every step)
  rows=N      the first N rows of each task (`rows=-N`: the last N)
  length=N    the training length L (default 10, CPU form 5)
  fixed       every training row at L (not 1..L), as the addition form trains
  offset=N    model.abacus_max_offset of the abacus rows (default 4L: training reaches
              digit index 5L + 1, evaluation at 3L reads up to 3L + 1)
  gap=N       model.abacus_max_gap of the abacus and abacus_rope rows (default 1:
              consecutive indices)
  down        model.abacus_count_down in the abacus and abacus_rope rows: the answer counts down from the
              input's length, so reverse's answer digit reads its input digit's index
              (copy and reverse only)
  sep         model.abacus_separator in the abacus and abacus_rope rows: the token right after a run of n
              digits reads index n + 1

The paper form is the length-generalisation setting (n_embd 384, budget 24, 5000 steps)
at L = 10, evaluated at 10, 15, 20 and 30. The CPU form uses `runlocal` (64 wide, batch
32) at budget 12, L = 5 (evaluated at 5, 8, 10 and 15) and 1500 steps with the addition
form's optimizer (lr 3e-3, 100 warmup steps, cosine to 0; why_trm.py `addform`): rows of
every length up to L share the steps, so L itself is seen less than at a fixed length.
"""

from artrm.configs import length_gen
from artrm.data import get_task
from artrm.tools import suites

TASKS = ('copy', 'reverse', 'addition_rev')
ENCODINGS = ('learned', 'none', 'rope', 'abacus', 'abacus_rope')
# The fix under which trm learns addition (why_trm.py addform, docs/science.md): x scaled to
# unit RMS at init (1 / 0.028) and the carry bounded.
NORMS = {'recipe.carry_norm': True, 'recipe.input_scale': 36.0}
MODELS = {
  'gpt': {'model.name': 'gpt'},
  'ut': {'model.name': 'ut'},
  'ut_level1': {'model.name': 'ut_level1'},
  'trm': {'model.name': 'trm', **NORMS},
  'ut_level2': {'model.name': 'ut_level2', **NORMS},
}
SCREEN = ('gpt', 'ut', 'trm')


def eval_lengths(L: int) -> tuple[int, ...]:
  return (L, int(1.5 * L + 0.5), 2 * L, 3 * L)


def get_config(arg=None):
  c, _ = parsed(arg)
  return c


def parsed(arg):
  c, a = length_gen.suite_config(
    arg,
    task='copy',
    only='',
    rows=0,
    screen=False,
    addition=False,
    inject=False,
    length=0,
    offset=-1,
    gap=1,
    down=False,
    sep=False,
    fixed=False,
    models='',
    encodings='',
  )
  if a.runlocal:
    # The optimizer of the CPU form in which addition is learned (why_trm.py's addform):
    # at the paper's constant 3e-4, 1000 CPU steps leave addition near chance.
    c.budget = 12
    c.max_steps = a.steps or 1500
    c.optimizer.update(learning_rate=3e-3, schedule='warmup_cosine', warmup_steps=100)
  if a.screen:
    c.num_seeds = 1
  c.train_length = L = a.length or (5 if a.runlocal else 10)
  c.train_length_min = 0 if a.fixed else 1  # 0: every row at L
  c.eval.lengths = eval_lengths(L)
  c.eval.every_steps = c.max_steps // 10  # learning curves of 10 points
  # Room for the longest evaluation of any task here (the paper's 180 holds 3L up to 58).
  longest = max(get_task(t).example_len(3 * L) for t in (*TASKS, 'addition'))
  c.model.block_size = max(c.model.block_size, longest)
  return c, a


def rows(a, L: int) -> list[dict]:
  """A row per (model, encoding), the encodings side by side for each model."""
  names = a.models.split('+') if a.models else list(SCREEN if a.screen else MODELS)
  if set(names) - set(MODELS):
    raise ValueError(f'models={a.models}: models are {"+".join(MODELS)}, e.g. models=gpt+trm.')
  models = {n: MODELS[n] for n in names}
  if a.inject:
    models['ut_injected'] = {'model.name': 'ut', 'model.input_injection': True}
  encodings = a.encodings.split('+') if a.encodings else ENCODINGS
  if set(encodings) - set(ENCODINGS):
    raise ValueError(f'encodings={a.encodings}: choose from {"+".join(ENCODINGS)}.')
  offset = 4 * L if a.offset < 0 else a.offset
  return [row(m, e, offset, a.gap, a.down, a.sep) for m in models.values() for e in encodings]


def row(
  model: dict, encoding: str, offset: int, gap: int = 1, down: bool = False, sep: bool = False
) -> dict:
  """One row's overrides (hence its run name): the model's, its position encoding, and
  for abacus the offset, and for abacus and abacus_rope, where set, the gap, the
  count-down and the separator."""
  if encoding not in ('abacus', 'abacus_rope'):
    return {**model, 'model.pos_encoding': encoding}
  # Rotation scores index differences, which an offset leaves alone: abacus_rope has none.
  offsets = {'model.abacus_max_offset': offset} if encoding == 'abacus' else {}
  gaps = {'model.abacus_max_gap': gap} if gap > 1 else {}
  downs = {'model.abacus_count_down': True} if down else {}
  seps = {'model.abacus_separator': True} if sep else {}
  return {
    **model,
    'model.pos_encoding': encoding,
    **offsets,
    **gaps,
    **downs,
    **seps,
  }


def get_sweep(arg=None):
  c, a = parsed(arg)
  known = (*TASKS, 'addition')
  tasks = a.only.split('+') if a.only else [*TASKS, *(['addition'] if a.addition else [])]
  if set(tasks) - set(known):
    raise ValueError(f'only={a.only}: tasks are {"+".join(known)}, e.g. only=copy+addition_rev.')
  every = rows(a, c.train_length)
  return [{'task': task, **row} for task in tasks for row in suites.pick_rows(every, a.rows)]


def length_table(roots: list[str], metric: str = 'seq_acc') -> str:
  """`metric` at every evaluation length of each finished run under `roots` (mean ± sem
  over seeds, n), a row per run: the screen's and the suite's answer in one table."""
  import pandas as pd

  from artrm.tools import report_tables, results  # tooling: only this report reads it

  df = pd.DataFrame([r for root in roots for r in results.gather(root)])
  final = df[(df['kind'] == 'final') & (df['metric'] == metric)]
  stats = report_tables.seed_stats(final, ['run', 'train_length', 'eval_length'])
  lengths = sorted(final['eval_length'].unique())
  return report_tables.stats_table(stats, ['run', 'train_length'], 'eval_length', lengths)


if __name__ == '__main__':
  import sys

  for m in ('char_acc', 'seq_acc'):
    print(f'\n{m} by evaluation length\n\n' + length_table(sys.argv[1:], m))
