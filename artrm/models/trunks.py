"""The trunks: how a rung loops its steps and reads them out, one per halting kind.

Each trunk takes the `RecursiveLM` it runs in, the embedded input x, the
initial streams and the `PassContext`, and returns (readout state, final
streams, ctx, aux). `TRUNKS` maps each halting kind (`RecursiveLM.halting`)
to its trunk: a new kind is a function and a row there.

Every loop is an `nn.scan` over steps (compile time does not grow with them);
the early stop of ACT and TRM is an `nn.cond` inside the scan that skips the
block work (`maybe_skip`).
"""

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from artrm.models import act as act_lib
from artrm.models.streams import SCAN, PassContext, Streams, step


class _ActCarry(NamedTuple):
  stream: Streams
  act: act_lib.ACTState
  ctx: PassContext
  taken: jax.Array


class _Replay(NamedTuple):
  """The latest step's input, to run it again with gradient (`q_trunk`, steps cut apart)."""

  s: jax.Array
  stream: Streams
  count: jax.Array


class _QCarry(NamedTuple):
  stream: Streams
  halted_B: jax.Array
  ctx: PassContext
  taken: jax.Array
  latest: _Replay | None = None


class _QTrainedCarry(NamedTuple):
  stream: Streams
  halted_BxT: jax.Array
  out_BxTxC: jax.Array
  ctx: PassContext
  taken_BxT: jax.Array


def maybe_skip(mdl, done, step_fn, carry, full_compute):
  """Runs `step_fn(mdl, carry)` unless `done`; skipping keeps carry as is."""
  if full_compute or mdl.is_initializing():
    return step_fn(mdl, carry)
  if mdl.seed_axis is None:
    return nn.cond(done, lambda m, c: c, step_fn, mdl, carry)
  # Under vmap a per-seed `done` turns the cond into a select that runs
  # every step: skip when every seed is done, and keep a done seed's carry.
  every_seed_done = jax.lax.pmin(done.astype(jnp.int32), mdl.seed_axis) > 0

  def step_or_keep(m, c):
    return jax.tree.map(functools.partial(jnp.where, done), c, step_fn(m, c))

  return nn.cond(every_seed_done, lambda m, c: c, step_or_keep, mdl, carry)


def none_trunk(mdl, x_BxTxC, stream, ctx, steps, deterministic, full_compute):
  """A fixed number of steps (`gpt`: its distinct blocks in turn)."""
  if not mdl.rung.tied:
    (h_BxTxC, ctx), _ = mdl.blocks((x_BxTxC, ctx), deterministic)
    return h_BxTxC, Streams(h_BxTxC), ctx, {'steps_taken': jnp.asarray(steps)}

  def body(mdl, carry, s):
    stream, n = carry
    return step(mdl, x_BxTxC, stream, s, n, deterministic, steps), None

  (stream, ctx), _ = SCAN(body)(mdl, (stream, ctx), jnp.arange(steps))
  return stream.y, stream, ctx, {'steps_taken': jnp.asarray(steps)}


def act_trunk(mdl, x_BxTxC, stream, ctx, steps, deterministic, full_compute):
  """Graves ACT on y: the output is the halting-weighted sum of the steps' y."""
  act0 = act_lib.act_init(x_BxTxC)
  zero = jnp.zeros((), jnp.int32)

  def step_fn(s, mdl, carry):
    stream, ctx = step(mdl, x_BxTxC, carry.stream, s, carry.ctx, deterministic, steps)
    p_BxT = jax.nn.sigmoid(mdl.act_halt(stream.y)[..., 0])
    return _ActCarry(stream, act_lib.act_update(carry.act, p_BxT, stream.y), ctx, carry.taken + 1)

  def body(mdl, carry, s):
    done = jnp.all(carry.act.halted_BxT)
    return maybe_skip(mdl, done, functools.partial(step_fn, s), carry, full_compute), None

  (stream, act, ctx, taken), _ = SCAN(body)(
    mdl, _ActCarry(stream, act0, ctx, zero), jnp.arange(steps)
  )
  out_BxTxC, ponder = act_lib.act_finalize(act, stream.y)
  return out_BxTxC, stream, ctx, {'ponder_cost': ponder, 'steps_taken': taken}


def min_steps(mdl, B: int, steps: int, deterministic: bool) -> jax.Array:
  """TRM's halting exploration: with halt_exploration_prob, a sequence must run
  a random 1..steps steps before it may halt (training only)."""
  if deterministic or mdl.config.halt_exploration_prob <= 0:
    return jnp.zeros((B,), jnp.int32)
  explore_key, steps_key = jax.random.split(mdl.make_rng('dropout'))
  explore_B = jax.random.bernoulli(explore_key, mdl.config.halt_exploration_prob, (B,))
  return jnp.where(explore_B, jax.random.randint(steps_key, (B,), 1, steps + 1), 0)


def _q_stop_rule(ctx: PassContext, steps: int):
  """(whether the Q-head may stop, the step that stops regardless).

  The Q-head reads position 0. Decoding a later token, position 0 is only in
  the cache: the step count the head fixed at prefill stops instead (with
  several supervision passes, the last pass's count stops them all).
  """
  if ctx.kv is None:
    return True, steps
  prefill = ctx.kv.index == 0
  return prefill, jnp.where(prefill, steps, ctx.kv.steps)


def q_trunk(mdl, x_BxTxC, stream, ctx, steps, deterministic, full_compute):
  """TRM's halting: the Q-head at position 0 stops the batch once every sequence halts."""
  B = x_BxTxC.shape[0]
  min_steps_B = min_steps(mdl, B, steps, deterministic)
  reads_q, last_step = _q_stop_rule(ctx, steps)
  # Decoding, each sequence stops at its own halting step, as if decoded
  # alone (the reference's evaluator): a halted sequence's streams freeze
  # while the batch runs on. Its cache entries past that step are never
  # read by a step it runs. Batch-level halting couples sequences; this
  # keeps the batch (and the pass counter that indexes the cache) whole.
  # Every step then runs: skipping under `cond` would copy the cache.
  freeze = ctx.kv is not None and not full_compute
  # Training with steps cut apart, only the last executed step's output
  # reaches the loss. The steps before it run in a scan whose outputs are
  # detached, so the backward pass skips them instead of running them on
  # zero cotangents; the latest step's input is kept to run it again (its
  # passes' dropout keys too) should the batch halt early.
  split = not deterministic and ctx.kv is None and steps > 1 and mdl.steps_cut_apart

  def step_fn(s, mdl, carry):
    stream, halted_B = carry.stream, carry.halted_B
    new_stream, new_ctx = step(mdl, x_BxTxC, stream, s, carry.ctx, deterministic, steps)
    if freeze:
      new_stream = jax.tree.map(
        lambda new, old: jnp.where(halted_B[:, None, None], old, new), new_stream, stream
      )
    q_B = mdl.q_halt(new_stream.y[:, 0])[:, 0]
    halts_B = (reads_q & (q_B > 0) & (s + 1 >= min_steps_B)) | (s + 1 >= last_step)
    taken = carry.taken + (~halted_B if freeze else 1)
    latest = _Replay(s, stream, carry.ctx.count) if split else None
    return _QCarry(new_stream, halted_B | halts_B, new_ctx, taken, latest)

  def body(mdl, carry, s):
    done = jnp.all(carry.halted_B)
    return maybe_skip(mdl, done, functools.partial(step_fn, s), carry, full_compute or freeze), None

  zero = jnp.zeros((B,) if freeze else (), jnp.int32)
  carry0 = _QCarry(stream, jnp.zeros((B,), bool), ctx, zero)
  if not split:
    (stream, _, ctx, taken, _), _ = SCAN(body)(mdl, carry0, jnp.arange(steps))
  else:
    carry0 = carry0._replace(latest=_Replay(zero, stream, ctx.count))
    carry, _ = SCAN(body)(mdl, carry0, jnp.arange(steps - 1))
    stream, ctx, taken = _last_step_with_gradient(mdl, x_BxTxC, carry, steps, deterministic)
  if ctx.kv is not None:
    ctx = ctx._replace(kv=ctx.kv._replace(steps=jnp.broadcast_to(taken, (B,))))
  return stream.y, stream, ctx, {'steps_taken': taken}


def _last_step_with_gradient(mdl, x_BxTxC, carry: _QCarry, steps, deterministic):
  """`q_trunk` with steps cut apart: after the first steps - 1 steps (`carry`), runs
  the last step, or the halting step again if the batch halted early (same pass
  indices: same dropout), from its detached input; returns (streams, ctx, taken)."""
  early = jnp.all(carry.halted_B)
  s, stream, count = jax.tree.map(
    lambda a, b: jnp.where(early, a, b),
    carry.latest,
    _Replay(steps - 1, carry.stream, carry.ctx.count),
  )
  ctx = carry.ctx._replace(count=count)
  stream, ctx = step(mdl, x_BxTxC, jax.lax.stop_gradient(stream), s, ctx, deterministic, steps)
  return stream, ctx, carry.taken + ~early


def q_trained_trunk(mdl, x_BxTxC, stream, ctx, steps, deterministic, full_compute):
  """TRM halting with a trained Q-head, per position (the recipe's halt_loss_weight).

  After each step the head reads y at every position; a position's output is
  y at the first step whose q > 0 (after its sequence's exploration minimum),
  else at the last step. Streams keep evolving after a position halts, as in
  ACT, so a causal forward gives each position what it gets decoded alone,
  with or without the cache. aux['halt'] holds each step's q and logits for
  the halting loss (`artrm.training.train_step.halt_loss`).
  """
  B, T = x_BxTxC.shape[:2]
  min_steps_Bx1 = min_steps(mdl, B, steps, deterministic)[:, None]

  def body(mdl, carry, s):
    stream, halted_BxT, out_BxTxC, ctx, taken_BxT = carry
    step_fn = lambda m, c: step(m, x_BxTxC, c[0], s, c[1], deterministic, steps)
    # Training reads every step (the loss needs each q): no early stop there.
    stream, ctx = maybe_skip(
      mdl, jnp.all(halted_BxT), step_fn, (stream, ctx), full_compute or not deterministic
    )
    y_BxTxC = stream.y
    q_BxT = mdl.q_halt(y_BxTxC)[..., 0]
    running_BxT = ~halted_BxT
    out_BxTxC = jnp.where(running_BxT[..., None], y_BxTxC, out_BxTxC)
    halted_BxT = halted_BxT | ((q_BxT > 0) & (s + 1 >= min_steps_Bx1))
    carry = _QTrainedCarry(stream, halted_BxT, out_BxTxC, ctx, taken_BxT + running_BxT)
    return carry, (q_BxT, mdl.lm_head(mdl.ln_f(y_BxTxC)))

  carry0 = _QTrainedCarry(
    stream,
    jnp.zeros((B, T), bool),
    jnp.zeros_like(x_BxTxC),
    ctx,
    jnp.zeros((B, T), jnp.int32),
  )
  (stream, _, out_BxTxC, ctx, taken_BxT), (q_SxBxT, logits_SxBxTxV) = SCAN(body)(
    mdl, carry0, jnp.arange(steps)
  )
  aux = {
    'steps_taken': jnp.mean(taken_BxT.astype(jnp.float32)),
    'halt': {'q_SxBxT': q_SxBxT, 'logits_SxBxTxV': logits_SxBxTxV},
  }
  return out_BxTxC, stream, ctx, aux


# The trunk of each halting kind (`RecursiveLM.halting`).
TRUNKS = {
  'none': none_trunk,
  'act': act_trunk,
  'q': q_trunk,
  'q_trained': q_trained_trunk,
}
