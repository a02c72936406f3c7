"""Batched, jitted answer generation with full recompute (the reference's rule).

Every prompt of one (task, length) has the same length P, so a batch decodes
in a fixed buffer of P + A - 1 tokens (the last answer token is never fed
back): step i runs the model on the whole buffer and takes the token predicted
at position P - 1 + i. Positions not written yet cannot change the logits
before them (causal attention, per-position ACT, and TRM's halting reads
position 0), so this equals growing the sequence token by token, at one
compiled program per (shape, options). It is the reference a KV-cache decoder
must match.

TRM halts per batch (the loop runs until every element has halted), so its
results depend on what else is in the batch; the reference evaluates one
sequence at a time, and so does `generate` for batch-coupled rungs, by
vmapping over batches of one.

`generate_cached` gives the same tokens with a KV cache per block pass: the
prompt runs once, then each answer token once, at its own position. That is
exact because a position's states at pass p depend only on earlier positions'
states at passes <= p. ACT rungs run every step for each new token (halted
positions keep evolving, and later positions attend to them; the readout is
unchanged, see `artrm.models.act`). TRM's step count is fixed by position 0
alone, so it is read off at prefill, per sequence. The batch decodes together
and runs every step, a halted sequence's streams frozen, which gives each
sequence the tokens it gets alone and lets XLA write the cache in place (a
`vmap` over sequences, or an early-stop `cond`, made it copy the cache).
"""

import functools

import jax
import jax.numpy as jnp

from artrm.models.streams import KVCache

DECODINGS = ('greedy', 'sample')


def check_decoding(decoding: str):
  if decoding not in DECODINGS:
    raise ValueError(f'Unknown decoding {decoding!r}; choose one of {DECODINGS}.')


def check_fits(block_size: int, prompt_len: int, answer_len: int, what: str = 'this length'):
  need = prompt_len + answer_len - 1
  if need > block_size:
    raise ValueError(
      f"Evaluating {what} needs {need} positions but the model's block_size is "
      f'{block_size}: lower the eval length or raise model.block_size.'
    )


def next_token(logits_NxV: jax.Array, decoding: str, key: jax.Array | None, i) -> jax.Array:
  """Argmax, or a draw from the softmax with `fold_in(key, i)` at answer position i."""
  if decoding == 'greedy':
    return jnp.argmax(logits_NxV, axis=-1)
  return jax.random.categorical(jax.random.fold_in(key, i), logits_NxV.astype(jnp.float32))


def check_args(model, prompts_NxP: jax.Array, answer_len: int, decoding: str, key):
  check_decoding(decoding)
  if decoding == 'sample' and key is None:
    raise ValueError("decoding='sample' needs a PRNG key.")
  check_fits(model.config.block_size, prompts_NxP.shape[1], answer_len)


def per_sequence(model, fn):
  """`fn(idx_BxT) -> logits` on the whole batch or, for batch-coupled rungs, on
  each sequence as a batch of one."""
  if not model.batch_coupled:
    return fn
  return jax.vmap(lambda idx_T: fn(idx_T[None])[0])


JIT = functools.partial(
  jax.jit, static_argnames=('model', 'answer_len', 'decoding', 'inference_steps', 'full_compute')
)


@JIT
def generate(
  model,
  params,
  prompts_NxP: jax.Array,
  answer_len: int,
  *,
  decoding: str = 'greedy',
  key: jax.Array | None = None,
  inference_steps: int | None = None,
  full_compute: bool = False,
) -> jax.Array:
  """Answer tokens [N, answer_len] continuing `prompts_NxP`.

  'greedy' takes the argmax; 'sample' draws from the softmax (the reference's
  multinomial) with `fold_in(key, i)` at answer position i.
  """
  check_args(model, prompts_NxP, answer_len, decoding, key)
  N, P = prompts_NxP.shape
  forward = per_sequence(
    model,
    lambda idx_BxT: model.apply(
      {'params': params}, idx_BxT, inference_steps=inference_steps, full_compute=full_compute
    )[0],
  )

  def step(buf_NxS, i):
    # The model sees the first P + A - 1 slots; the spare last slot only
    # receives the final token, which is never fed back.
    logits_NxTxV = forward(buf_NxS[:, :-1])
    logits_NxV = jax.lax.dynamic_index_in_dim(logits_NxTxV, P - 1 + i, axis=1, keepdims=False)
    token_N = next_token(logits_NxV, decoding, key, i).astype(buf_NxS.dtype)
    return jax.lax.dynamic_update_index_in_dim(buf_NxS, token_N, P + i, axis=1), token_N

  buf_NxS = jnp.concatenate([prompts_NxP, jnp.zeros((N, answer_len), prompts_NxP.dtype)], axis=1)
  _, tokens_AxN = jax.lax.scan(step, buf_NxS, jnp.arange(answer_len))
  return tokens_AxN.T


def init_cache(model, batch: int, length: int, inference_steps: int | None = None) -> KVCache:
  """An empty cache of `length` positions for every block pass of a forward that runs all
  steps, in the model's compute dtype."""
  cfg = model.config
  steps = inference_steps or model.rung.default_steps(cfg)
  shape = (model.passes_per_forward(steps), batch, cfg.n_head, length, cfg.n_embd // cfg.n_head)
  return KVCache(
    jnp.zeros(shape, cfg.dtype),
    jnp.zeros(shape, cfg.dtype),
    jnp.zeros((), jnp.int32),
    jnp.full((batch,), steps, jnp.int32),
    jnp.zeros((batch, 2), jnp.int32),
  )


@JIT
def generate_cached(
  model,
  params,
  prompts_NxP: jax.Array,
  answer_len: int,
  *,
  decoding: str = 'greedy',
  key: jax.Array | None = None,
  inference_steps: int | None = None,
  full_compute: bool = False,
) -> jax.Array:
  """`generate` with a KV cache: the same tokens, one position of work per answer token."""
  check_args(model, prompts_NxP, answer_len, decoding, key)
  N, P = prompts_NxP.shape

  def apply(idx_BxT, cache):
    logits_BxTxV, aux = model.apply(
      {'params': params},
      idx_BxT,
      inference_steps=inference_steps,
      full_compute=full_compute,
      cache=cache,
    )
    return logits_BxTxV[:, -1], aux['cache']

  logits_NxV, cache = apply(prompts_NxP, init_cache(model, N, P + answer_len - 1, inference_steps))

  def step(carry, i):
    logits_NxV, cache = carry
    token_N = next_token(logits_NxV, decoding, key, i).astype(prompts_NxP.dtype)
    return apply(token_N[:, None], cache), token_N

  # The last answer token is never fed back.
  (logits_NxV, _), tokens_AxN = jax.lax.scan(step, (logits_NxV, cache), jnp.arange(answer_len - 1))
  last_N = next_token(logits_NxV, decoding, key, answer_len - 1).astype(prompts_NxP.dtype)
  return jnp.concatenate([tokens_AxN.T, last_N[:, None]], axis=1)
