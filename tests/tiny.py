"""The tiny training run the trainer's tests share: seconds of CPU per run."""

from artrm.configs import length_gen


def tiny_config(name='gpt', task='copy', *, width=32, batch=16, block_size=24, **overrides):
  """8 steps of a `width`-wide `name` on `task` at L = 3: checkpoints and evaluations at 4 and 8."""
  c = length_gen.get_config(f'model={name},task={task},runlocal')
  c.model.update(n_embd=width, n_head=2, block_size=block_size)
  c.budget = 2
  c.train_length = 3
  c.batch_size = batch
  c.max_steps = 8
  c.eval.update(lengths=(3,), every_steps=4, n_samples=batch, batch_size=batch)
  c.checkpoint.every_steps = 4
  c.log.update(every_steps=2, progress_bar=False)
  for k, v in overrides.items():
    c[k] = v
  return c
