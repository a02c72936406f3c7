"""The one pre-norm decoder block every rung applies (paper-spec "The shared block").

Parameter names mirror the neutral golden format (`ln1`, `attn/query`, ...), so
that `artrm.models.weights` maps foreign weights onto this module one to one.

`dtype` is the compute dtype: params are float32 and cast for each matmul;
attention logits accumulate and the softmax runs in float32, and Flax's
LayerNorm takes its statistics in float32 before casting back.
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from artrm.models import positions

INIT = nn.initializers.normal(stddev=0.02)
LN_EPS = 1e-5


def layer_norm(name: str, dtype: Any = jnp.float32) -> nn.LayerNorm:
  # The two-pass variance matches torch's LayerNorm to float32 accuracy; the
  # fast E[x^2]-E[x]^2 form drifts on the deliberately large golden weights.
  return nn.LayerNorm(epsilon=LN_EPS, use_fast_variance=False, dtype=dtype, name=name)


def rms_normalize(x: jax.Array, eps: float = LN_EPS) -> jax.Array:
  """x / RMS(x) over channels, statistics in float32, no learned scale (TRM's post-norm)."""
  x32 = x.astype(jnp.float32)
  return (x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + eps)).astype(x.dtype)


def dense(features: int, name: str, dtype: Any = jnp.float32) -> nn.Dense:
  return nn.Dense(
    features, kernel_init=INIT, bias_init=nn.initializers.zeros, dtype=dtype, name=name
  )


class KVSlot(NamedTuple):
  """A block pass's view of the KV cache when decoding.

  x holds positions start..start+T-1 of sequences whose earlier keys/values
  are cached at block pass `pass_index` of the [P, B, H, S, D] arrays.
  """

  key_PxBxHxSxD: jax.Array
  value_PxBxHxSxD: jax.Array
  pass_index: jax.Array
  start: jax.Array


class CausalSelfAttention(nn.Module):
  """Per-head q/k/v without bias, causal softmax, dropout on weights and output.

  With a `KVSlot`, x's keys/values are written at its pass, then that pass's
  slice is attended to; returns the output and the updated slot (None without
  one). Writing before reading lets XLA update the (loop-carried) caches in
  place; reading a slice first and writing it back after made it copy every
  cache at every pass.
  """

  n_head: int
  dropout: float
  dtype: Any = jnp.float32
  rope: bool = False  # rotary q / k (model.pos_encoding='rope' or 'abacus_rope', `positions.rope`)

  @nn.compact
  def __call__(
    self,
    x_BxTxC: jax.Array,
    deterministic: bool,
    slot: KVSlot | None = None,
    rngs=(None, None),
    rope_BxT: jax.Array | None = None,
  ):
    C = x_BxTxC.shape[-1]
    if C % self.n_head:
      raise ValueError(
        f'n_embd={C} is not divisible by n_head={self.n_head}: choose n_head that divides n_embd.'
      )
    D = C // self.n_head
    proj = lambda name: self.param(name, INIT, (self.n_head, C, D)).astype(self.dtype)
    q_BxTxHxD = jnp.einsum('btc,hcd->bthd', x_BxTxC, proj('query'))
    # Keys and values head-major: cached slices then feed the attention
    # matmuls without a transpose per pass.
    k_BxHxTxD = jnp.einsum('btc,hcd->bhtd', x_BxTxC, proj('key'))
    v_BxHxTxD = jnp.einsum('btc,hcd->bhtd', x_BxTxC, proj('value'))
    start = 0 if slot is None else slot.start
    if self.rope:  # keys are cached rotated: a key's rotation is fixed by its position
      # rope_BxT: the tokens' abacus indices; None: their positions in the sequence.
      if rope_BxT is None:
        rope_BxT = start + jnp.arange(x_BxTxC.shape[1])[None]
      q_BxTxHxD = positions.rope(q_BxTxHxD, rope_BxT, time_axis=1)
      k_BxHxTxD = positions.rope(k_BxHxTxD, rope_BxT, time_axis=2)
    k_BxHxSxD, v_BxHxSxD = k_BxHxTxD, v_BxHxTxD
    if slot is not None:
      put = lambda a, new: jax.lax.dynamic_update_slice(
        a, new[None], (slot.pass_index, 0, 0, start, 0)
      )
      slot = slot._replace(
        key_PxBxHxSxD=put(slot.key_PxBxHxSxD, k_BxHxTxD),
        value_PxBxHxSxD=put(slot.value_PxBxHxSxD, v_BxHxTxD),
      )
      k_BxHxSxD, v_BxHxSxD = (
        jax.lax.dynamic_index_in_dim(a, slot.pass_index, keepdims=False)
        for a in (slot.key_PxBxHxSxD, slot.value_PxBxHxSxD)
      )
    T, S = x_BxTxC.shape[1], k_BxHxSxD.shape[2]
    logits_BxHxTxS = jnp.einsum(
      'bqhd,bhkd->bhqk', q_BxTxHxD, k_BxHxSxD, preferred_element_type=jnp.float32
    ) / jnp.sqrt(D).astype(jnp.float32)
    causal_TxS = jnp.arange(S)[None, :] <= start + jnp.arange(T)[:, None]
    logits_BxHxTxS = jnp.where(causal_TxS, logits_BxHxTxS, jnp.finfo(logits_BxHxTxS.dtype).min)
    weights_BxHxTxS = jax.nn.softmax(logits_BxHxTxS, axis=-1).astype(self.dtype)
    weights_BxHxTxS = nn.Dropout(self.dropout)(weights_BxHxTxS, deterministic, rngs[0])
    y_BxTxHxD = jnp.einsum('bhqk,bhkd->bqhd', weights_BxHxTxS, v_BxHxSxD)
    y_BxTxC = dense(C, 'out', self.dtype)(y_BxTxHxD.reshape(x_BxTxC.shape))
    return nn.Dropout(self.dropout)(y_BxTxC, deterministic, rngs[1]), slot


class CausalMLPMixer(nn.Module):
  """Attention-free token mixing: position t gets sum_{s <= t} W[t, s] x_s + b_t.

  TRM's MLP mixer applied across the sequence, made causal by a
  lower-triangular W [max_len, max_len] shared by all channels (one map, so
  the parameter count does not grow with width). It has no keys or values to
  cache: decode it with full recompute.
  """

  n_head: int  # unused: the signature of the attention it replaces
  dropout: float
  max_len: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self,
    x_BxTxC: jax.Array,
    deterministic: bool,
    slot: KVSlot | None = None,
    rngs=(None, None),
    rope_BxT=None,  # unused: the signature of the attention it replaces
  ):
    if slot is not None:
      raise ValueError(
        'recipe.mixer=mlp has no KV cache: evaluate with eval.kv_cache=False '
        '(artrm eval --nokv_cache).'
      )
    T = x_BxTxC.shape[1]
    w_SxS = self.param('mix', INIT, (self.max_len, self.max_len))
    b_S = self.param('mix_bias', nn.initializers.zeros, (self.max_len,))
    w_TxT = jnp.where(jnp.tri(T, dtype=bool), w_SxS[:T, :T], 0.0)
    y_BxTxC = jnp.einsum('ts,bsc->btc', w_TxT.astype(self.dtype), x_BxTxC)
    y_BxTxC = y_BxTxC + b_S[:T, None].astype(self.dtype)
    return nn.Dropout(self.dropout)(y_BxTxC, deterministic, rngs[1]), None


class MLP(nn.Module):
  dropout: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxC: jax.Array, deterministic: bool, rng=None) -> jax.Array:
    C = x_BxTxC.shape[-1]
    h_BxTx4C = jax.nn.gelu(dense(4 * C, 'fc1', self.dtype)(x_BxTxC), approximate=False)
    return nn.Dropout(self.dropout)(dense(C, 'fc2', self.dtype)(h_BxTx4C), deterministic, rng)


class Block(nn.Module):
  """x + Attn(LN1(x)), then + MLP(LN2(.)): pre-norm, as the paper's code.

  Returns (out, slot): the `KVSlot` updated with this pass's keys/values when
  decoding (see `CausalSelfAttention`), else None. `rng` (training) is the
  pass's own dropout key, split over its three dropouts: a pass's masks then
  depend on the forward's key and the pass's index only, not on how the loops
  around it are arranged (without it, Flax's 'dropout' stream).
  """

  n_head: int
  dropout: float = 0.0
  mixer: str = 'attention'  # 'attention' or 'mlp' (recipe.mixer)
  max_len: int = 0  # positions the MLP mixer spans (model.block_size)
  dtype: Any = jnp.float32
  rope: bool = False  # rotary q / k in attention (model.pos_encoding='rope' or 'abacus_rope')

  @nn.compact
  def __call__(
    self,
    x_BxTxC: jax.Array,
    deterministic: bool = True,
    slot: KVSlot | None = None,
    rng: jax.Array | None = None,
    rope_BxT: jax.Array | None = None,
  ) -> tuple[jax.Array, KVSlot | None]:
    if self.rope and self.mixer != 'attention':
      raise ValueError(
        'model.pos_encoding=rope or abacus_rope rotates attention queries and keys; '
        'recipe.mixer=mlp has none: use pos_encoding learned, none or abacus, or '
        'mixer=attention.'
      )
    mix = (
      CausalSelfAttention(self.n_head, self.dropout, self.dtype, self.rope, name='attn')
      if self.mixer == 'attention'
      else CausalMLPMixer(self.n_head, self.dropout, self.max_len, self.dtype, name='mix')
    )
    rngs = (None,) * 3 if rng is None else tuple(jax.random.split(rng, 3))
    attn_BxTxC, slot = mix(
      layer_norm('ln1', self.dtype)(x_BxTxC), deterministic, slot, rngs[:2], rope_BxT
    )
    h_BxTxC = x_BxTxC + attn_BxTxC
    out_BxTxC = h_BxTxC + MLP(self.dropout, self.dtype, name='mlp')(
      layer_norm('ln2', self.dtype)(h_BxTxC), deterministic, rngs[2]
    )
    return out_BxTxC, slot


# What the backward pass keeps of each block pass (`ModelConfig.remat`). Every
# pass runs inside a scan, which stacks the kept activations of all its steps
# (for ACT and TRM even of the steps an early stop skips); on CPU writing and
# reading those stacks costs more than recomputing the block. Gradients are the
# same either way: remat changes what is stored, not what is computed.
REMAT_POLICIES = {
  'none': None,  # keep everything
  'full': jax.checkpoint_policies.nothing_saveable,  # keep the block's input
  'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
}


def block_class(remat: str) -> type[Block]:
  """`Block`, or `Block` under `nn.remat` with the named policy."""
  if remat not in REMAT_POLICIES:
    raise ValueError(f'Unknown model.remat {remat!r}; choose one of {list(REMAT_POLICIES)}.')
  if remat == 'none':
    return Block
  # deterministic (argument 2, counting self) selects dropout: static.
  return nn.remat(Block, static_argnums=(2,), policy=REMAT_POLICIES[remat], prevent_cse=False)
