"""The one pre-norm decoder block every rung applies (paper-spec "The shared block").

Parameter names mirror the neutral golden format (`ln1`, `attn/query`, ...), so
that `artrm.models.weights` maps foreign weights onto this module one to one.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

INIT = nn.initializers.normal(stddev=0.02)
LN_EPS = 1e-5


def layer_norm(name: str) -> nn.LayerNorm:
  # The two-pass variance matches torch's LayerNorm to float32 accuracy; the
  # fast E[x^2]-E[x]^2 form drifts on the deliberately large golden weights.
  return nn.LayerNorm(epsilon=LN_EPS, use_fast_variance=False, name=name)


def dense(features: int, name: str) -> nn.Dense:
  return nn.Dense(features, kernel_init=INIT, bias_init=nn.initializers.zeros, name=name)


class CausalSelfAttention(nn.Module):
  """Per-head q/k/v without bias, causal softmax, dropout on weights and output."""

  n_head: int
  dropout: float

  @nn.compact
  def __call__(self, x_BxTxC: jax.Array, deterministic: bool) -> jax.Array:
    C = x_BxTxC.shape[-1]
    if C % self.n_head:
      raise ValueError(f'n_embd={C} is not divisible by n_head={self.n_head}: '
                       'choose n_head that divides n_embd.')
    D = C // self.n_head
    proj = lambda name: self.param(name, INIT, (self.n_head, C, D))
    q_BxTxHxD = jnp.einsum('btc,hcd->bthd', x_BxTxC, proj('query'))
    k_BxTxHxD = jnp.einsum('btc,hcd->bthd', x_BxTxC, proj('key'))
    v_BxTxHxD = jnp.einsum('btc,hcd->bthd', x_BxTxC, proj('value'))
    T = x_BxTxC.shape[1]
    logits_BxHxTxT = jnp.einsum('bqhd,bkhd->bhqk', q_BxTxHxD, k_BxTxHxD) / jnp.sqrt(D).astype(x_BxTxC.dtype)
    causal_TxT = jnp.tril(jnp.ones((T, T), dtype=bool))
    logits_BxHxTxT = jnp.where(causal_TxT, logits_BxHxTxT, jnp.finfo(logits_BxHxTxT.dtype).min)
    weights_BxHxTxT = jax.nn.softmax(logits_BxHxTxT, axis=-1)
    weights_BxHxTxT = nn.Dropout(self.dropout)(weights_BxHxTxT, deterministic=deterministic)
    y_BxTxHxD = jnp.einsum('bhqk,bkhd->bqhd', weights_BxHxTxT, v_BxTxHxD)
    y_BxTxC = dense(C, 'out')(y_BxTxHxD.reshape(x_BxTxC.shape))
    return nn.Dropout(self.dropout)(y_BxTxC, deterministic=deterministic)


class MLP(nn.Module):
  dropout: float

  @nn.compact
  def __call__(self, x_BxTxC: jax.Array, deterministic: bool) -> jax.Array:
    C = x_BxTxC.shape[-1]
    h_BxTx4C = jax.nn.gelu(dense(4 * C, 'fc1')(x_BxTxC), approximate=False)
    return nn.Dropout(self.dropout)(dense(C, 'fc2')(h_BxTx4C), deterministic=deterministic)


class Block(nn.Module):
  """x + Attn(LN1(x)), then + MLP(LN2(.)): pre-norm, as the paper's code."""

  n_head: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x_BxTxC: jax.Array, deterministic: bool = True) -> jax.Array:
    h_BxTxC = x_BxTxC + CausalSelfAttention(self.n_head, self.dropout, name='attn')(
        layer_norm('ln1')(x_BxTxC), deterministic)
    return h_BxTxC + MLP(self.dropout, name='mlp')(layer_norm('ln2')(h_BxTxC), deterministic)
