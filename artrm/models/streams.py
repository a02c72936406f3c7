"""One step of a rung: the streams it carries, the block pass it is made of, and the
step bodies of the single- and dual-stream rungs.

A step maps the streams (`Streams`) to new ones by block passes. Every pass
goes through `apply_block`, which takes and returns the `PassContext`: the pass
count plus what is indexed by it (the KV cache when decoding, the dropout key
when training), so the step bodies are the same with or without either.

The functions take the `RecursiveLM` they run in (`mdl`) as their first
argument, as Flax's lifted loops (`nn.scan`, `nn.cond`) pass it, and read its
blocks, embeddings and recipe from it.
"""

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from artrm.models.block import KVSlot, block_class, rms_normalize
from artrm.models.recipe import GRAD_REACH, last_k_cut


class KVCache(NamedTuple):
  """Keys and values of every block pass (axis P) for the positions decoded so far."""

  key_PxBxHxSxD: jax.Array
  value_PxBxHxSxD: jax.Array
  index: jax.Array  # int32: positions cached, i.e. the position of the next token
  steps: jax.Array  # int32 [B]: TRM's step count per sequence, fixed by the Q-head at prefill
  digit_runs: jax.Array  # int32 [B, 2]: the last cached token's `positions.digit_runs`


class Streams(NamedTuple):
  """The streams a step carries: y, the one read out (single-stream rungs' only one), and
  z, the latent of dual-stream rungs (None in single-stream ones)."""

  y: jax.Array
  z: jax.Array | None = None


class PassContext(NamedTuple):
  """What a block pass needs besides its input, threaded through every loop.

  `count` is the index of the next block pass: the forward returns it as
  aux['block_passes'], and it picks what belongs to that pass, its slice of the
  KV cache `kv` when decoding and its dropout key (`dropout_key` folded with the
  count) when training. Carried together, they leave the step and trunk logic
  the same with or without a cache or dropout, and the loops need not split
  Flax's 'dropout' stream.
  """

  count: jax.Array
  kv: KVCache | None = None
  dropout_key: jax.Array | None = None
  rope_BxT: jax.Array | None = None  # abacus indices that rotate q / k (pos_encoding=abacus_rope)


def apply_block(block: nn.Module, h_BxTxC, ctx: PassContext, deterministic):
  """One block pass; when decoding, it reads and extends this pass's slice of the cache."""
  count, kv, key, rope_BxT = ctx
  slot = None if kv is None else KVSlot(kv.key_PxBxHxSxD, kv.value_PxBxHxSxD, count, kv.index)
  rng = None if key is None else jax.random.fold_in(key, count)
  out_BxTxC, slot = block(h_BxTxC, deterministic, slot, rng, rope_BxT)
  if kv is not None:
    kv = kv._replace(key_PxBxHxSxD=slot.key_PxBxHxSxD, value_PxBxHxSxD=slot.value_PxBxHxSxD)
  return out_BxTxC, ctx._replace(count=count + 1, kv=kv)


# Dropout keys come with `PassContext`, so no loop splits Flax's 'dropout' stream.
SCAN = functools.partial(nn.scan, variable_broadcast='params', split_rngs={'params': False})


class LayerStep(nn.Module):
  """One of `gpt`'s distinct blocks, shaped for `nn.scan` over stacked params."""

  n_head: int
  dropout: float
  remat: str
  mixer: str
  max_len: int
  dtype: Any
  rope: bool

  @nn.compact
  def __call__(self, carry, deterministic: bool):
    h_BxTxC, ctx = carry
    block = block_class(self.remat)(
      self.n_head, self.dropout, self.mixer, self.max_len, self.dtype, self.rope, name='block'
    )
    return apply_block(block, h_BxTxC, ctx, deterministic), None


def init_streams(mdl, x_BxTxC) -> Streams:
  """The streams before the first step: x (or zeros, with input injection) for one
  stream; the learned (or fixed, recipe.fixed_init) y0 / z0 for two."""
  if mdl.rung.stream == 'single':
    # With input injection every pass adds x, so the stream starts empty.
    return Streams(jnp.zeros_like(x_BxTxC) if mdl.config.input_injection else x_BxTxC)
  fixed = jax.lax.stop_gradient if mdl.recipe.fixed_init else (lambda v: v)
  return Streams(
    *(jnp.broadcast_to(fixed(v).astype(mdl.dtype), x_BxTxC.shape) for v in (mdl.y_init, mdl.z_init))
  )


def step_embedding(mdl, s: jax.Array) -> jax.Array | float:
  """Step s's embedding; steps past the trained table reuse its last row."""
  if not mdl.uses_step_embeddings:
    return 0.0
  return mdl.step_emb[jnp.minimum(s, mdl.step_emb.shape[0] - 1)].astype(mdl.dtype)


def step(mdl, x_BxTxC, stream: Streams, s, ctx: PassContext, deterministic, steps):
  """One step: returns (new streams, ctx); the readout state is their y."""
  e_C = step_embedding(mdl, s)
  if mdl.rung.stream == 'single':
    h_BxTxC = stream.y + x_BxTxC if mdl.config.input_injection else stream.y
    h_BxTxC, ctx = apply_block(mdl.block, h_BxTxC + e_C, ctx, deterministic)
    return Streams(h_BxTxC), ctx
  return dual_step(mdl, x_BxTxC, stream, e_C, ctx, deterministic, s, steps)


def dual_step(mdl, x_BxTxC, stream: Streams, e_C, ctx: PassContext, deterministic, s, steps):
  """H cycles of [L z-updates, one y-update], as flat scans of block passes.

  A pass updates z from x + y + z, or y from y + z (no x, as in the paper's
  code); one scan over that pattern keeps a single block in the program,
  which halves compile time against nested z / y scans. Nested rungs detach
  (y, z) where the recipe's gradient reach cuts (`recipe.GRAD_REACH`): each
  static cut starts a new scan, so the passes before it never enter the
  backward pass (the paper's rule: step start and last cycle).
  """
  H, L = mdl.rung.cycles(mdl.config)
  per_step = H * (L + 1)
  cuts = GRAD_REACH[mdl.recipe.grad_reach](per_step, L + 1) if mdl.rung.nested else ()
  norm = rms_normalize if mdl.recipe.carry_norm else (lambda v: v)

  def sub_step(mdl, carry, xs):
    updates_z, j = xs
    (y, z), n = carry
    cut = last_k_cut(mdl.recipe, s, j, steps, per_step)
    if cut is not None:
      y, z = (jnp.where(cut, jax.lax.stop_gradient(a), a) for a in (y, z))
    new, n = apply_block(
      mdl.block, jnp.where(updates_z, x_BxTxC + y + z, y + z) + e_C, n, deterministic
    )
    new = norm(new)
    return (Streams(jnp.where(updates_z, y, new), jnp.where(updates_z, new, z)), n), None

  pattern = jnp.tile(jnp.arange(L + 1) < L, H)
  bounds = sorted({0, per_step, *cuts})
  for a, b in zip(bounds, bounds[1:]):
    if a in cuts:
      stream = jax.lax.stop_gradient(stream)
    (stream, ctx), _ = SCAN(sub_step)(mdl, (stream, ctx), (pattern[a:b], jnp.arange(a, b)))
  return stream, ctx
