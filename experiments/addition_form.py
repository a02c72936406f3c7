"""The search for a CPU form in which addition is learned (the reference rows).

`why_trm.py`'s CPU form (64 wide, 400 steps, train L 5, the paper's constant
lr 3e-4) leaves every rung near chance on addition, so addition cannot rank
its rows. This suite trains the two reference rows, `gpt` and `ut_level1`, on
addition over a few settings of the levers that cost CPU time (train length,
width, steps, batch) with one lr schedule for all (warmup then cosine to 0),
and reports char_acc and seq_acc at the training length with 3 seeds each.
The smallest setting at which both reach char_acc >= 0.9 becomes the study
form (`why_trm.py:addform`).

  python -m artrm suite --suite=experiments/addition_form.py --root=workdirs/addition_form --slots=2
  python -m artrm gather --root=workdirs/addition_form

Arguments: `seeds=N`, `steps=N` (every setting's steps), `rows=N` (the first N settings).
"""

from artrm.configs import length_gen

# (train length, width, steps, batch, lr, schedule): the settings, cheapest first.
SETTINGS = (
  (3, 64, 2000, 32, 1e-3, 'warmup_cosine'),
  (3, 64, 1500, 32, 3e-3, 'warmup_cosine'),
  (3, 64, 3000, 32, 1e-3, 'warmup_cosine'),
  (4, 64, 3000, 32, 3e-3, 'warmup_cosine'),
  (3, 64, 2000, 32, 3e-4, 'constant'),
)
REFERENCES = ('gpt', 'ut_level1')


def get_config(arg=None):
  c, _ = parsed(arg)
  return c


def parsed(arg):
  c, a = length_gen.suite_config(arg, rows=0)
  c = length_gen.make_runlocal(c)
  c.budget = 12  # why_trm's CPU form: trm runs 2 steps of 2 x (2 + 1) passes
  c.optimizer.warmup_steps = 100
  return c, a


def setting(L, width, steps, batch, lr, schedule, seeds_steps=0) -> dict:
  steps = seeds_steps or steps
  return {
    'train_length': L,
    'model.n_embd': width,
    'max_steps': steps,
    'batch_size': batch,
    'optimizer.learning_rate': lr,
    'optimizer.schedule': schedule,
    'eval.lengths': (L,),
    'eval.every_steps': steps // 10,
  }


def get_sweep(arg=None):
  _, a = parsed(arg)
  picked = SETTINGS[: a.rows or None]
  return [
    {'model.name': name, 'task': 'addition', **setting(*s, seeds_steps=a.steps)}
    for s in picked
    for name in REFERENCES
  ]
