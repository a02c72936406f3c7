"""Loader for the neutral weight format (`../shared/golden/README.md`).

A neutral file is a flat `.npz` with `config/<key>` scalars and `param/<path>`
arrays whose kernels compute `x @ kernel + bias`. This is how fidelity to the
paper's code is proven, and how weights from another implementation come in:
write them under these names and `load_neutral` builds the rung and params.
"""

import collections
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from artrm.models.config import ModelConfig
from artrm.models.rungs import RecursiveLM, build_model

# neutral config key -> ModelConfig field
_CONFIG_KEYS = {
  'model': 'name',
  'vocab_size': 'vocab_size',
  'block_size': 'block_size',
  'n_embd': 'n_embd',
  'n_head': 'n_head',
  'n_layer': 'n_layer',
  'n_inner_loops': 'n_inner_loops',
  'n_outer_loops': 'n_outer_loops',
  'use_step_embeddings': 'use_step_embeddings',
  'ponder_cost_weight': 'ponder_cost_weight',
  'max_act_steps': 'max_act_steps',
}
# neutral leaf paths whose Flax name differs
_RENAMES = {('tok_emb',): ('tok_emb', 'embedding')}


def _scalar(value: np.ndarray) -> Any:
  value = value.item()
  return value.decode() if isinstance(value, bytes) else value


def config_from_neutral(arrays: Mapping[str, np.ndarray]) -> ModelConfig:
  if 'config/model' not in arrays:
    raise ValueError('A neutral file names its rung in config/model; this one has no such entry.')
  raw = {k[len('config/') :]: _scalar(v) for k, v in arrays.items() if k.startswith('config/')}
  fields = {_CONFIG_KEYS[k]: v for k, v in raw.items() if k in _CONFIG_KEYS}
  types = {f: type(getattr(ModelConfig(), f)) for f in fields}
  return ModelConfig(**{f: types[f](v) for f, v in fields.items()})


def params_from_neutral(arrays: Mapping[str, np.ndarray], where: str = 'params') -> dict:
  """Nested Flax params; `blocks/<i>/...` are stacked on a leading layer axis."""
  params: dict = {}
  layers: dict[int, dict] = {}
  for key, value in arrays.items():
    if not key.startswith('param/'):
      continue
    path = tuple(key[len('param/') :].split('/'))
    path = _RENAMES.get(path, path)
    if path[0] == 'blocks':
      _set(layers.setdefault(int(path[1]), {}), path[2:], value)
    else:
      _set(params, path, value)
  if layers:
    check_blocks(arrays, where)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[layers[i] for i in sorted(layers)])
    params['blocks'] = {'block': stacked}
  return params


def load_neutral(path: str | os.PathLike) -> tuple[RecursiveLM, dict, dict[str, np.ndarray]]:
  """Returns (model, params, the file's remaining arrays such as idx/logits)."""
  with np.load(path) as f:
    arrays = dict(f)
  config = config_from_neutral(arrays)
  rest = {k: v for k, v in arrays.items() if not k.startswith(('param/', 'config/'))}
  rest.update({k: v for k, v in arrays.items() if k.startswith('config/')})
  model, params = build_model(config), params_from_neutral(arrays, where=str(path))
  check_params(model, params, where=str(path))
  return model, params, rest


def check_blocks(arrays: Mapping[str, np.ndarray], where: str = 'params'):
  """Fails naming each `param/blocks/<i>/...` entry that is missing from a block, or has
  another shape than in the other blocks: blocks are stacked, so all must match."""
  shapes: dict[str, dict[int, tuple]] = {}
  for key, value in arrays.items():
    if key.startswith('param/blocks/'):
      _, _, i, name = key.split('/', 3)
      shapes.setdefault(name, {})[int(i)] = value.shape
  blocks = sorted({i for by_block in shapes.values() for i in by_block})
  problems = []
  for name, by_block in sorted(shapes.items()):
    usual = collections.Counter(by_block.values()).most_common(1)[0][0]
    problems += [f'missing param/blocks/{i}/{name} {usual}' for i in blocks if i not in by_block]
    problems += [
      f'param/blocks/{i}/{name} is {shape}, expected {usual}'
      for i, shape in sorted(by_block.items())
      if shape != usual
    ]
  if problems:
    raise ValueError(f'{where}: every block must hold the same arrays: {"; ".join(problems)}.')


def check_params(model: RecursiveLM, params: dict, where: str = 'params'):
  """Fails naming every missing, unexpected or mis-shaped array unless `params` fit `model`."""
  idx_1xT = jnp.zeros((1, model.config.block_size), jnp.int32)
  expected = jax.eval_shape(model.init, jax.random.key(0), idx_1xT)['params']
  shapes = lambda tree: {
    '/'.join(k.key for k in path): tuple(x.shape)
    for path, x in jax.tree_util.tree_leaves_with_path(tree)
  }
  want, got = shapes(expected), shapes(params)
  problems = (
    [f'missing {k} {want[k]}' for k in sorted(set(want) - set(got))]
    + [f'unexpected {k}' for k in sorted(set(got) - set(want))]
    + [
      f'{k} is {got[k]}, expected {want[k]}'
      for k in sorted(set(want) & set(got))
      if want[k] != got[k]
    ]
  )
  if problems:
    raise ValueError(
      f'{where} does not fit {model.config.name} '
      f'(in Flax names, blocks stacked): {"; ".join(problems)}.'
    )


def _set(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = jnp.asarray(value)
