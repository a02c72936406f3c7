"""The training objective: next-token cross entropy plus the ACT ponder cost."""

import jax
import jax.numpy as jnp
import optax

from artrm.data.vocab import IGNORE_INDEX
from artrm.models.config import ModelConfig


def cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
  """Mean over targets that are not IGNORE_INDEX (torch's ignore_index rule)."""
  mask_BxT = targets_BxT != IGNORE_INDEX
  nll_BxT = optax.softmax_cross_entropy_with_integer_labels(
      logits_BxTxV.astype(jnp.float32), jnp.where(mask_BxT, targets_BxT, 0))
  return jnp.sum(nll_BxT * mask_BxT) / jnp.maximum(jnp.sum(mask_BxT), 1)


def lm_loss(config: ModelConfig, logits_BxTxV: jax.Array, aux: dict, targets_BxT: jax.Array) -> jax.Array:
  loss = cross_entropy(logits_BxTxV, targets_BxT)
  if 'ponder_cost' in aux:
    loss = loss + config.ponder_cost_weight * aux['ponder_cost']
  return loss
