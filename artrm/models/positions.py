"""Where a token is, as the model sees it: `model.pos_encoding` (`config.POS_ENCODINGS`).

  learned  a learned vector per absolute position, added to x (the paper's): the
           rows past the training length are never trained
  none     no position signal; causal attention alone tells positions apart (NoPE)
  rope     q and k rotated by their absolute position inside attention (`rope`),
           so attention scores depend on relative positions; decoding with the
           KV cache, a new token's position is the cache's index
  abacus_rope  q and k rotated by their abacus index (below, without offsets:
           rotation makes scores depend on index differences alone), so that
           "the digit one index above mine" is one rotation at every length
  abacus   a learned vector per digit index, added to x: a digit's 1-based place
           in its run of consecutive digits (its operand or answer), 0 for any
           other token. Training adds a random offset per sequence (0 up to
           `model.abacus_max_offset`) to every digit index, so that the indices
           of operands longer than the training length are trained too; the
           evaluation adds none. With `model.abacus_max_gap` > 1, training also
           spaces the indices apart: digit k reads offset + g_1 + ... + g_k, each
           gap g_i drawn per sequence from 1..max_gap (the same for every run of
           the sequence, so digits of equal significance still share a row), so
           that a sequence's runs span and contrast indices further apart than
           the training length holds (randomised positions, Ruoss et al. 2023);
           evaluation uses gap 1. With `model.abacus_count_down`, a run that
           follows another run counts down from that run's length n: its k-th
           digit reads n + 1 - k, so reverse's k-th answer digit reads the index
           of the input digit it copies, at every length. With
           `model.abacus_separator`, the token right after a run of n digits
           (an operator, the prompt's end) reads n + 1, so the token that
           predicts reverse's first answer digit reads one above it too. A
           digit's index depends on the tokens before it, so a KV cache carries
           what its last token had (`digit_runs`).

The rungs read `learned` and `abacus` in `RecursiveLM.embed`, `rope` and `abacus_rope`
in `block.CausalSelfAttention` (the abacus indices reach it through `PassContext`).
"""

import jax
import jax.numpy as jnp

from artrm.data.vocab import char_id
from artrm.models.config import ModelConfig

N_DIGITS = char_id('9') + 1  # the digits are token ids 0..9
ROPE_BASE = 10000.0


def abacus_rows(cfg: ModelConfig) -> int:
  """Rows of the abacus table: index 0 (no digit), then every index a run of digits in
  block_size positions reaches with the largest training offset and gaps."""
  return cfg.block_size * cfg.abacus_max_gap + cfg.abacus_max_offset + 1


def digit_index(idx_BxT: jax.Array, last_B: jax.Array | None = None) -> jax.Array:
  """Each digit's 1-based index in its run of consecutive digits, 0 for other tokens.

  `last_B` is the index of the token before idx_BxT[:, 0] (a KV cache's last
  token; None: there is none), so that a run continues across decoding calls.
  """
  B, T = idx_BxT.shape
  t_T = jnp.arange(T)
  digit_BxT = idx_BxT < N_DIGITS
  # Where the current run began, minus one: the last non-digit at or before t, or the
  # virtual non-digit that ends the cached run.
  before_B = -1 - (jnp.zeros((B,), jnp.int32) if last_B is None else last_B)
  nondigit_BxT = jax.lax.cummax(jnp.where(digit_BxT, before_B[:, None], t_T[None]), axis=1)
  return jnp.where(digit_BxT, t_T - nondigit_BxT, 0)


def digit_runs(idx_BxT: jax.Array, last_Bx2: jax.Array | None = None) -> jax.Array:
  """Each token's digit index k (`digit_index`) and the length of the last run of digits
  that ended before its own run began (for a non-digit: at or before it; 0 if none), as
  [B, T, 2]. `last_Bx2` is that pair for the token before idx_BxT[:, 0] (a KV cache's
  last token, `[:, -1]` of this; None: there is none), so decoding in pieces reads
  what one pass over the whole sequence reads."""
  B, T = idx_BxT.shape
  last_Bx2 = jnp.zeros((B, 2), jnp.int32) if last_Bx2 is None else last_Bx2
  k_BxT = digit_index(idx_BxT, last_Bx2[:, 0])
  t_T = jnp.arange(T)
  # The last digit at or before each position: -1 is the cached token where it is a
  # digit, -2 where the cached token's own pair answers.
  cached_B = jnp.where(last_Bx2[:, 0] > 0, -1, -2)
  seen_BxT = jax.lax.cummax(jnp.where(idx_BxT < N_DIGITS, t_T[None], -2), axis=1)
  seen_BxT = jnp.maximum(seen_BxT, cached_B[:, None])
  # The token before a token's run is the token itself for a non-digit; a run begun in
  # the cache has none here (-1), and the cached pair's run-before answers.
  start_BxT = t_T[None] - k_BxT
  ended_BxT = jnp.where(
    start_BxT >= 0, jnp.take_along_axis(seen_BxT, jnp.maximum(start_BxT, 0), axis=1), -2
  )
  before_BxT = jnp.where(
    ended_BxT >= 0,
    jnp.take_along_axis(k_BxT, jnp.maximum(ended_BxT, 0), axis=1),
    jnp.where(ended_BxT == -1, last_Bx2[:, :1], last_Bx2[:, 1:]),
  )
  return jnp.stack([k_BxT, before_BxT], axis=-1)


def abacus_index(
  idx_BxT: jax.Array,
  last_Bx2: jax.Array | None,
  offset_B: jax.Array,
  gaps_BxK: jax.Array | None = None,
  count_down: bool = False,
  separator: bool = False,
) -> jax.Array:
  """The row of the abacus table each token reads: its digit index k plus its sequence's
  offset, 0 for a non-digit; with `count_down`, n + 1 - k in a run that follows a run of
  n digits (0 past n); with `separator`, n + 1 for the non-digit right after a run of n
  digits; with `gaps_BxK` (K >= the longest run + 1) the sum of the sequence's first
  that-many gaps in place of the count. `last_Bx2`: as in `digit_runs`."""
  if last_Bx2 is None:
    last_Bx2 = jnp.zeros((idx_BxT.shape[0], 2), jnp.int32)
  runs_BxTx2 = digit_runs(idx_BxT, last_Bx2)
  k_BxT, before_BxT = runs_BxTx2[..., 0], runs_BxTx2[..., 1]
  index_BxT = k_BxT
  if count_down:
    down_BxT = jnp.maximum(before_BxT + 1 - k_BxT, 0)
    index_BxT = jnp.where((k_BxT > 0) & (before_BxT > 0), down_BxT, index_BxT)
  if separator:
    k_before_BxT = jnp.concatenate([last_Bx2[:, :1], k_BxT[:, :-1]], axis=1)
    index_BxT = jnp.where((k_BxT == 0) & (k_before_BxT > 0), k_before_BxT + 1, index_BxT)
  if gaps_BxK is not None:
    spaced_BxK1 = jnp.pad(jnp.cumsum(gaps_BxK, axis=1), ((0, 0), (1, 0)))
    index_BxT = jnp.take_along_axis(spaced_BxK1, index_BxT, axis=1)
  return jnp.where(index_BxT > 0, index_BxT + offset_B[:, None], 0)


def rope(x: jax.Array, positions_BxT: jax.Array, time_axis: int) -> jax.Array:
  """x [B, ..., D] with each channel pair (i, i + D/2) rotated by position x angle_i
  (rotary embedding, float32 angles); `time_axis` is x's axis of T, and positions_BxT's
  B may be 1 (one set of positions for every sequence)."""
  D = x.shape[-1]
  inv_freq_H = ROPE_BASE ** (-jnp.arange(0, D, 2, dtype=jnp.float32) / D)
  angle_BxTxH = positions_BxT.astype(jnp.float32)[..., None] * inv_freq_H
  shape = [positions_BxT.shape[0]] + [1] * (x.ndim - 1)
  shape[time_axis], shape[-1] = positions_BxT.shape[1], D
  cos, sin = (jnp.tile(f(angle_BxTxH), 2).reshape(shape) for f in (jnp.cos, jnp.sin))
  x32 = x.astype(jnp.float32)
  rotated = jnp.concatenate([-x32[..., D // 2 :], x32[..., : D // 2]], axis=-1)
  return (x32 * cos + rotated * sin).astype(x.dtype)
