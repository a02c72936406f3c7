"""The tiny configs and models the tests share: seconds of CPU per run."""

import functools

import jax

from artrm.configs import length_gen
from artrm.models import ModelConfig, build_model, init_params


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


def small_config(name='trm', **overrides) -> ModelConfig:
  """A 32-wide `name` over the 14-token vocabulary and 16 positions: 3 layers, or 2
  steps of 1 cycle (the goldens' shape)."""
  base = dict(
    name=name,
    vocab_size=14,
    block_size=16,
    n_embd=32,
    n_head=4,
    n_layer=3,
    n_outer_loops=2,
    n_inner_loops=1,
  )
  return ModelConfig(**{**base, **overrides})


def model_and_params(cfg: ModelConfig, recipe=None, seed=0):
  """The model of `cfg` (and `recipe`) and its fresh params from key `seed`."""
  model = build_model(cfg, recipe)
  return model, init_params(model, jax.random.key(seed))


@functools.cache
def tiny_model(name, block_size=40, **overrides):
  """A 32-wide, 2-layer `name` and its params from key 0, built once per arguments (the
  decoding tests share them; block_size 40 leaves room for their prompts and answers)."""
  cfg = ModelConfig(name=name, n_embd=32, n_head=4, n_layer=2, block_size=block_size, **overrides)
  return model_and_params(cfg)
