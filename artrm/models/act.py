"""Graves-style adaptive computation time as a small pure state machine.

Per position (b, t): `act_update` folds one step's halting probability and
state into the running weighted output (float32, whatever the state's dtype);
`act_finalize` gives the positions still running their remainder. Halted
positions add zero, so stopping the step loop once all have halted changes
nothing (paper-spec "ACT").
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

HALT_EPS = 1e-6


class ACTState(NamedTuple):
  halted_BxT: jax.Array  # bool
  accum_BxT: jax.Array  # a: accumulated halting probability
  remainder_BxT: jax.Array  # r: 1 - a at the halting step
  updates_BxT: jax.Array  # n: steps each position ran (float, as in the ponder cost)
  output_BxTxC: jax.Array  # o: halting-weighted sum of states (float32)


def act_init(state_BxTxC: jax.Array) -> ACTState:
  zeros_BxT = jnp.zeros(state_BxTxC.shape[:-1], jnp.float32)
  return ACTState(
    jnp.zeros(zeros_BxT.shape, bool),
    zeros_BxT,
    zeros_BxT,
    zeros_BxT,
    jnp.zeros(state_BxTxC.shape, jnp.float32),
  )


def act_update(act: ACTState, p_BxT: jax.Array, state_BxTxC: jax.Array) -> ACTState:
  running_BxT = ~act.halted_BxT
  halts_now_BxT = running_BxT & (act.accum_BxT + p_BxT >= 1.0 - HALT_EPS)
  continues_BxT = running_BxT & ~halts_now_BxT
  remainder_BxT = jnp.where(halts_now_BxT, 1.0 - act.accum_BxT, act.remainder_BxT)
  weight_BxT = jnp.where(halts_now_BxT, remainder_BxT, jnp.where(continues_BxT, p_BxT, 0.0))
  return ACTState(
    halted_BxT=act.halted_BxT | halts_now_BxT,
    accum_BxT=jnp.where(continues_BxT, act.accum_BxT + p_BxT, act.accum_BxT),
    remainder_BxT=remainder_BxT,
    updates_BxT=act.updates_BxT + running_BxT,
    output_BxTxC=act.output_BxTxC + weight_BxT[..., None] * state_BxTxC.astype(jnp.float32),
  )


def act_finalize(act: ACTState, last_state_BxTxC: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Returns (output o, ponder cost = mean(n + r)) after the step loop."""
  running_BxT = ~act.halted_BxT
  remainder_BxT = jnp.where(running_BxT, 1.0 - act.accum_BxT, act.remainder_BxT)
  leftover_BxT = jnp.where(running_BxT, remainder_BxT, 0.0)
  output_BxTxC = act.output_BxTxC + leftover_BxT[..., None] * last_state_BxTxC.astype(jnp.float32)
  return output_BxTxC, jnp.mean(act.updates_BxT + remainder_BxT)
