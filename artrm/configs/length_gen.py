"""Length generalisation: train at L = 10, evaluate at 10..50 (the paper's main run).

Paper scale, one rung and task:
  artrm train --config=artrm/configs/length_gen.py:model=trm,task=addition --workdir=runs/trm_add
Small CPU variant (minutes on a laptop):
  artrm train --config=artrm/configs/length_gen.py:model=trm,task=copy,runlocal --workdir=/tmp/trm
Any field can be overridden on the command line, e.g. `--config.max_steps=1000`.
On a GPU, add `--config.model.dtype=bfloat16`: activations and matmuls in bf16
(tensor cores), params, softmax, LayerNorm statistics and the loss in float32.

This file also holds the base config that the suites in experiments/ build on.
`arg` is comma-separated `key=value` pairs plus bare flags (big_vision style),
e.g. `model=trm,task=copy,runlocal`. `runlocal` selects a small CPU variant
of the same experiment: same code path, tiny widths and few steps.
"""

import ast
import dataclasses
import difflib

import ml_collections

from artrm.models.config import ModelConfig
from artrm.models.recipe import Recipe


def parse_arg(arg: str | None, **defaults):
  """Parses `arg` over `defaults`; an unknown key is an error naming the known ones."""
  out = dict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, _, value = item.partition('=')
    if key not in out:
      near = difflib.get_close_matches(key, out, n=1)
      hint = f'did you mean {near[0]!r}? ' if near else ''
      raise ValueError(f'Unknown config arg {key!r}; {hint}known: {sorted(out)}.')
    if not value:
      out[key] = True
    else:
      try:
        out[key] = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        out[key] = value
  return ml_collections.ConfigDict(out)


def base_config() -> ml_collections.ConfigDict:
  """The paper's length-generalisation run (paper-spec "The paper's runs")."""
  c = ml_collections.ConfigDict()
  c.seed = 1337
  # Seeds seed, seed + 1, ... trained together in one program (vmapped):
  # small models fill an accelerator, and every number gets its error bar.
  c.num_seeds = 1
  c.task = 'addition'
  c.train_length = 10
  # > 0: each training row's length is drawn uniformly from train_length_min..train_length
  # (shorter rows padded after their closing newline, the padding out of the loss).
  c.train_length_min = 0
  # > 0: training rows padded (with newline, out of the loss) to this many positions, as
  # the paper pads to block_size; runs on tasks of different row lengths then share one
  # stacked program (`training.stacking`). 0: each task's shortest row.
  c.train_seq_len = 0
  c.batch_size = 64
  c.max_steps = 5000
  # Block passes to equalise across rungs (paper-spec "Compute normalisation");
  # 0 keeps model.n_layer, n_outer_loops and n_inner_loops as given.
  c.budget = 24

  c.model = _paper_model()

  # How the model is trained beyond the optimizer: the TRM recipe's
  # ingredients (artrm/models/recipe.py, docs/recipes.md); all off = the paper.
  c.recipe = ml_collections.ConfigDict(dataclasses.asdict(Recipe()))
  c.optimizer = _paper_optimizer()

  c.eval = ml_collections.ConfigDict(
    dict(
      lengths=(10, 20, 30, 40, 50),
      every_steps=250,
      n_samples=100,
      seed=0,
      batch_size=100,
      decoding='greedy',
      inference_steps=0,
      full_compute=False,
      kv_cache=True,
    )
  )

  c.checkpoint = ml_collections.ConfigDict(
    dict(
      every_steps=0,  # 0: max_steps / 10
      max_to_keep=0,  # periodic checkpoints kept; 0 keeps all
      best_metric='seq_acc',  # at the training length, mean over seeds
    )
  )
  c.log = ml_collections.ConfigDict(
    dict(every_steps=50, progress_bar=True, tensorboard=False, wandb_project='')
  )
  return c


def _paper_model() -> ml_collections.ConfigDict:
  """The model section of `base_config`: the paper's sizes and dropout."""
  model = ml_collections.ConfigDict(dataclasses.asdict(ModelConfig()))
  model.update(
    name='gpt', n_embd=384, n_head=6, dropout=0.1, block_size=180, ponder_cost_weight=0.0
  )
  # Recompute each block pass in the backward pass: same gradients, and on CPU
  # faster than keeping the scans' stacked activations at the small setup, and
  # no slower at paper scale (docs/performance.md, "Training step, CPU"). `none`
  # keeps them all.
  model.remat = 'full'
  # float32 here, as the goldens; bfloat16 on GPUs (see the docstring). float32
  # matmuls run in full float32, as torch runs them by default: JAX's 'default'
  # would round their inputs to TF32 on Ampere and Hopper GPUs (CPUs ignore it).
  model.update(dtype='float32', matmul_precision='float32')
  return model


def _paper_optimizer() -> ml_collections.ConfigDict:
  """torch.optim.AdamW with the paper's settings: constant lr, decay on every parameter.
  schedule='warmup_cosine' (warmup_steps, then a cosine to 0) and embed_lr_mult (the
  embeddings' step size alone) are switches for studies; off is the paper."""
  return ml_collections.ConfigDict(
    dict(
      learning_rate=3e-4,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=0.01,
      grad_clip_norm=0.0,
      schedule='constant',
      warmup_steps=0,
      embed_lr_mult=1.0,
    )
  )


def make_runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a config to a CPU-sized run of the same experiment."""
  c.model.update(n_embd=64, n_head=4, dropout=0.0)
  c.budget = 6
  c.batch_size = 32
  c.max_steps = 400
  c.eval.update(
    every_steps=200,
    n_samples=64,
    batch_size=64,
    lengths=tuple(sorted({c.train_length, c.train_length + 2})),
  )
  c.log.every_steps = 50
  return c


def get_config(arg: str | None = None):
  a = parse_arg(arg, model='gpt', task='addition', runlocal=False)
  c = base_config()
  c.model.name = a.model
  c.task = a.task
  return make_runlocal(c) if a.runlocal else c


def suite_config(arg: str | None, task: str = 'addition', **suite_args):
  """(config, parsed arg) for a suite in experiments/: `runlocal`, `seeds=N` (default 3),
  `dtype=bfloat16` (model.dtype, for GPUs), `steps=N` (max_steps; 0 keeps the config's),
  and the suite's own `suite_args` (name=default)."""
  a = parse_arg(arg, runlocal=False, seeds=3, dtype='float32', steps=0, **suite_args)
  c = get_config(f'task={task}' + (',runlocal' if a.runlocal else ''))
  c.num_seeds = a.seeds
  c.model.dtype = a.dtype
  c.max_steps = a.steps or c.max_steps
  return c, a
