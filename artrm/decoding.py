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
sequence at a time, and so does this decoder for batch-coupled rungs, by
vmapping over batches of one.
"""

import functools

import jax
import jax.numpy as jnp

DECODINGS = ('greedy', 'sample')


def check_decoding(decoding: str):
  if decoding not in DECODINGS:
    raise ValueError(f'Unknown decoding {decoding!r}; choose one of {DECODINGS}.')


def check_fits(block_size: int, prompt_len: int, answer_len: int, what: str = 'this length'):
  need = prompt_len + answer_len - 1
  if need > block_size:
    raise ValueError(f'Evaluating {what} needs {need} positions but the model\'s block_size is '
                     f'{block_size}: lower the eval length or raise model.block_size.')


@functools.partial(jax.jit, static_argnames=('model', 'answer_len', 'decoding', 'inference_steps',
                                             'full_compute'))
def generate(model, params, prompts_NxP: jax.Array, answer_len: int, *, decoding: str = 'greedy',
             key: jax.Array | None = None, inference_steps: int | None = None,
             full_compute: bool = False) -> jax.Array:
  """Answer tokens [N, answer_len] continuing `prompts_NxP`.

  'greedy' takes the argmax; 'sample' draws from the softmax (the reference's
  multinomial) with `fold_in(key, i)` at answer position i.
  """
  check_decoding(decoding)
  if decoding == 'sample' and key is None:
    raise ValueError("decoding='sample' needs a PRNG key.")
  N, P = prompts_NxP.shape
  check_fits(model.config.block_size, P, answer_len)

  def apply(idx_BxT):
    return model.apply({'params': params}, idx_BxT, inference_steps=inference_steps,
                       full_compute=full_compute)[0]

  def forward(buf_NxT):
    if model.rung.batch_coupled:
      return jax.vmap(lambda idx_T: apply(idx_T[None])[0])(buf_NxT)
    return apply(buf_NxT)

  def step(buf_NxS, i):
    # The model sees the first P + A - 1 slots; the spare last slot only
    # receives the final token, which is never fed back.
    logits_NxTxV = forward(buf_NxS[:, :-1])
    logits_NxV = jax.lax.dynamic_index_in_dim(logits_NxTxV, P - 1 + i, axis=1, keepdims=False)
    if decoding == 'greedy':
      token_N = jnp.argmax(logits_NxV, axis=-1)
    else:
      token_N = jax.random.categorical(jax.random.fold_in(key, i), logits_NxV.astype(jnp.float32))
    token_N = token_N.astype(buf_NxS.dtype)
    return jax.lax.dynamic_update_index_in_dim(buf_NxS, token_N, P + i, axis=1), token_N

  buf_NxS = jnp.concatenate([prompts_NxP, jnp.zeros((N, answer_len), prompts_NxP.dtype)], axis=1)
  _, tokens_AxN = jax.lax.scan(step, buf_NxS, jnp.arange(answer_len))
  return tokens_AxN.T
