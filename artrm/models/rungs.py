"""The seven rungs of the paper's ladder, as one Flax module plus a recipe each.

Every rung is embeddings -> trunk -> final LayerNorm -> LM head. The trunks
differ along three independent axes, which the `Rung` recipe names:

  stream   'single': h <- block(h + e_s)                          (rungs 1-4)
           'dual':   H cycles of [L x z <- block(x + y + z + e_s)],
                     then y <- block(y + z + e_s)                  (rungs 5-7)
  halting  'none' (fixed steps), 'act' (Graves ACT on the stream), 'q' (TRM
           Q-head at position 0, batch-level stop)
  nested   H, L from the config, y/z detached at each step start and the first
           H-1 cycles without gradient (rungs 6-7); otherwise H = L = 1.

All loops are `nn.scan` (compile time does not grow with steps); the early
stop of ACT and TRM is an `nn.cond` inside the scan that skips the block work.
Each trunk also returns the number of block passes it executed, threaded
through the loops as a counter, so tests can check the compute accounting.

`config.dtype` is the compute dtype of embeddings, streams, blocks and the LM
head (params stay float32); the halting heads, ACT's weighted output and the
returned logits are float32. `config.matmul_precision` wraps the forward in
`jax.default_matmul_precision`, so training, evaluation and decoding share it.

KV-cached decoding rides on that counter: in a forward that runs every step,
the count is the index of the block pass, and each pass (a `gpt` layer, a
tied step, a z- or y-update) attends to the cached keys/values of the earlier
positions at the same pass index. The cache travels with the counter
(`Passes`), so the rung logic is the same with or without it.
"""

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from artrm.models import act as act_lib
from artrm.models.block import INIT, KVSlot, block_class, dense, layer_norm
from artrm.models.config import ModelConfig, Rung, get_rung

Aux = dict[str, Any]


class KVCache(NamedTuple):
  """Keys and values of every block pass (axis P) for the positions decoded so far."""

  key_PxBxHxSxD: jax.Array
  value_PxBxHxSxD: jax.Array
  index: jax.Array   # int32: positions cached, i.e. the position of the next token
  steps: jax.Array   # int32 [B]: TRM's step count per sequence, fixed by the Q-head at prefill


class Passes(NamedTuple):
  """Block passes executed so far and, when decoding, the KV cache they index."""

  count: jax.Array
  kv: KVCache | None = None


def apply_block(block: nn.Module, h_BxTxC, passes: Passes, deterministic):
  """One block pass; when decoding, it reads and extends this pass's slice of the cache."""
  count, kv = passes
  slot = None if kv is None else KVSlot(kv.key_PxBxHxSxD, kv.value_PxBxHxSxD, count, kv.index)
  out_BxTxC, slot = block(h_BxTxC, deterministic, slot)
  if kv is not None:
    kv = kv._replace(key_PxBxHxSxD=slot.key_PxBxHxSxD, value_PxBxHxSxD=slot.value_PxBxHxSxD)
  return out_BxTxC, Passes(count + 1, kv)


SCAN = functools.partial(
    nn.scan, variable_broadcast='params', split_rngs={'params': False, 'dropout': True})


class _LayerStep(nn.Module):
  """One of `gpt`'s distinct blocks, shaped for `nn.scan` over stacked params."""

  n_head: int
  dropout: float
  remat: str
  dtype: Any

  @nn.compact
  def __call__(self, carry, deterministic: bool):
    h_BxTxC, passes = carry
    block = block_class(self.remat)(self.n_head, self.dropout, self.dtype, name='block')
    return apply_block(block, h_BxTxC, passes, deterministic), None


class RecursiveLM(nn.Module):
  """A decoder of the ladder; `rung` picks the trunk, `config` the sizes."""

  config: ModelConfig
  rung: Rung

  def setup(self):
    cfg, rung = self.config, self.rung
    self.tok_emb = nn.Embed(cfg.vocab_size, cfg.n_embd, embedding_init=INIT, dtype=self.dtype)
    self.pos_emb = self.param('pos_emb', INIT, (cfg.block_size, cfg.n_embd))
    if self.uses_step_embeddings:
      self.step_emb = self.param('step_emb', INIT, (rung.default_steps(cfg), cfg.n_embd))
    if rung.tied:
      self.block = block_class(cfg.remat)(cfg.n_head, cfg.dropout, self.dtype)
    else:
      self.blocks = nn.scan(_LayerStep, variable_axes={'params': 0}, in_axes=nn.broadcast,
                            split_rngs={'params': True, 'dropout': True},
                            length=cfg.n_layer)(cfg.n_head, cfg.dropout, cfg.remat, self.dtype)
    if rung.stream == 'dual':
      self.y_init = self.param('y_init', INIT, (cfg.n_embd,))
      self.z_init = self.param('z_init', INIT, (cfg.n_embd,))
    # The halting heads stay float32: their inputs are cast up, and a halting
    # decision is a threshold on their output.
    if rung.halting == 'act':
      self.act_halt = dense(1, 'act_halt')
    if rung.halting == 'q':
      self.q_halt = nn.Dense(1, kernel_init=nn.initializers.zeros, dtype=jnp.float32,
                             bias_init=nn.initializers.constant(-5.0), name='q_halt')
    self.ln_f = layer_norm('ln_f', self.dtype)
    self.lm_head = dense(cfg.vocab_size, 'lm_head', self.dtype)

  @property
  def dtype(self) -> jnp.dtype:
    return jnp.dtype(self.config.dtype)

  @property
  def uses_step_embeddings(self) -> bool:
    return self.rung.step_embeddings and self.config.use_step_embeddings

  def __call__(self, idx_BxT: jax.Array, *, deterministic: bool = True,
               inference_steps: int | None = None, full_compute: bool = False,
               cache: KVCache | None = None) -> tuple[jax.Array, Aux]:
    """Returns next-token logits [B, T, V] and aux metrics of the trunk.

    `inference_steps` runs more (or fewer) steps than trained, reusing the last
    step embedding past the table; `full_compute` disables every early stop.
    With `cache` (`artrm.decoding.init_cache`), idx holds the tokens at positions
    cache.index.., the earlier ones being cached; aux['cache'] then has them added.
    """
    cfg = self.config
    T = idx_BxT.shape[1]
    if T > cfg.block_size:
      raise ValueError(f'Sequence length {T} exceeds block_size={cfg.block_size}: '
                       'raise model.block_size or shorten the input.')
    steps = inference_steps or self.rung.default_steps(cfg)
    if not self.rung.tied and steps != cfg.n_layer:
      raise ValueError(f'{cfg.name} has {cfg.n_layer} distinct blocks; it cannot run '
                       f'{steps} inference steps. Use a weight-tied rung for step scaling.')
    if cache is not None:
      if cache.key_PxBxHxSxD.shape[0] < self.rung.block_passes(cfg, steps):
        # dynamic_update_slice would clamp the pass index and overwrite silently.
        raise ValueError(f'The KV cache holds {cache.key_PxBxHxSxD.shape[0]} block passes but '
                         f'{steps} steps run {self.rung.block_passes(cfg, steps)}: build it with '
                         'decoding.init_cache(model, ..., inference_steps) for these steps.')
      if cache.key_PxBxHxSxD.dtype != self.dtype:
        raise ValueError(f'The KV cache is {cache.key_PxBxHxSxD.dtype} but model.dtype is '
                         f'{cfg.dtype}: build it with decoding.init_cache(model, ...).')
    if cfg.matmul_precision == 'default':   # whatever JAX is configured with
      return self._forward(idx_BxT, steps, deterministic, full_compute, cache)
    with jax.default_matmul_precision(cfg.matmul_precision):
      return self._forward(idx_BxT, steps, deterministic, full_compute, cache)

  def _forward(self, idx_BxT, steps, deterministic, full_compute, cache):
    start, T = (0 if cache is None else cache.index), idx_BxT.shape[1]
    x_BxTxC = self.tok_emb(idx_BxT) + jax.lax.dynamic_slice_in_dim(
        self.pos_emb.astype(self.dtype), start, T)
    if cache is not None and self.rung.halting == 'act':
      # Halted positions keep evolving and later positions attend to every
      # pass of theirs: a new token must fill the cache at all steps.
      full_compute = True
    trunk = {'none': self._fixed_trunk, 'act': self._act_trunk, 'q': self._q_trunk}[self.rung.halting]
    h_BxTxC, passes, aux = trunk(x_BxTxC, Passes(jnp.zeros((), jnp.int32), cache), steps,
                                 deterministic, full_compute)
    aux['block_passes'] = passes.count
    if cache is not None:
      aux['cache'] = passes.kv._replace(index=start + T)
    return self.lm_head(self.ln_f(h_BxTxC)).astype(jnp.float32), aux

  # -- one step of each stream kind -------------------------------------------

  def _step_embedding(self, s: jax.Array) -> jax.Array | float:
    if not self.uses_step_embeddings:
      return 0.0
    return self.step_emb[jnp.minimum(s, self.step_emb.shape[0] - 1)].astype(self.dtype)

  def _apply_block(self, h_BxTxC, passes, deterministic):
    return apply_block(self.block, h_BxTxC, passes, deterministic)

  def _stream_init(self, x_BxTxC):
    if self.rung.stream == 'single':
      return (x_BxTxC,)
    return tuple(jnp.broadcast_to(init_C.astype(self.dtype), x_BxTxC.shape)
                 for init_C in (self.y_init, self.z_init))

  def _step(self, x_BxTxC, stream, s, passes, deterministic):
    """One step: returns (new stream, passes); the readout state is stream[0]."""
    e_C = self._step_embedding(s)
    if self.rung.stream == 'single':
      h_BxTxC, passes = self._apply_block(stream[0] + e_C, passes, deterministic)
      return (h_BxTxC,), passes
    return self._dual_step(x_BxTxC, stream, e_C, passes, deterministic)

  def _dual_step(self, x_BxTxC, stream, e_C, passes, deterministic):
    """H cycles of [L z-updates, one y-update], as flat scans of block passes.

    A pass updates z from x + y + z, or y from y + z (no x, as in the paper's
    code); one scan over that pattern keeps a single block in the program,
    which halves compile time against nested z / y scans.
    """
    H, L = self.rung.cycles(self.config)
    y_BxTxC, z_BxTxC = stream
    if self.rung.nested:
      y_BxTxC, z_BxTxC = jax.lax.stop_gradient((y_BxTxC, z_BxTxC))

    def sub_step(mdl, carry, updates_z):
      y, z, n = carry
      new, n = mdl._apply_block(jnp.where(updates_z, x_BxTxC + y + z, y + z) + e_C, n, deterministic)
      return (jnp.where(updates_z, y, new), jnp.where(updates_z, new, z), n), None

    cycle_pattern = jnp.arange(L + 1) < L
    carry = (y_BxTxC, z_BxTxC, passes)
    if H > 1:  # TRM's rule: the first H-1 cycles refine without gradient
      carry, _ = SCAN(sub_step)(self, carry, jnp.tile(cycle_pattern, H - 1))
      carry = (*jax.lax.stop_gradient(carry[:2]), carry[2])
    (y_BxTxC, z_BxTxC, passes), _ = SCAN(sub_step)(self, carry, cycle_pattern)
    return (y_BxTxC, z_BxTxC), passes

  def _maybe_skip(self, done, step_fn, carry, full_compute):
    """Runs `step_fn(mdl, carry)` unless `done`; skipping keeps carry as is."""
    if full_compute or self.is_initializing():
      return step_fn(self, carry)
    return nn.cond(done, lambda mdl, c: c, step_fn, self, carry)

  # -- trunks: how steps are looped and read out --------------------------------

  def _fixed_trunk(self, x_BxTxC, passes, steps, deterministic, full_compute):
    if not self.rung.tied:
      (h_BxTxC, passes), _ = self.blocks((x_BxTxC, passes), deterministic)
      return h_BxTxC, passes, {'steps_taken': jnp.asarray(steps)}

    def body(mdl, carry, s):
      stream, n = carry
      return mdl._step(x_BxTxC, stream, s, n, deterministic), None

    (stream, passes), _ = SCAN(body)(self, (self._stream_init(x_BxTxC), passes), jnp.arange(steps))
    return stream[0], passes, {'steps_taken': jnp.asarray(steps)}

  def _act_trunk(self, x_BxTxC, passes, steps, deterministic, full_compute):
    stream = self._stream_init(x_BxTxC)
    act0 = act_lib.act_init(x_BxTxC)
    zero = jnp.zeros((), jnp.int32)

    def step_fn(s, mdl, carry):
      stream, act, passes, taken = carry
      stream, passes = mdl._step(x_BxTxC, stream, s, passes, deterministic)
      p_BxT = jax.nn.sigmoid(mdl.act_halt(stream[0])[..., 0])
      return stream, act_lib.act_update(act, p_BxT, stream[0]), passes, taken + 1

    def body(mdl, carry, s):
      done = jnp.all(carry[1].halted_BxT)
      return mdl._maybe_skip(done, functools.partial(step_fn, s), carry, full_compute), None

    (stream, act, passes, taken), _ = SCAN(body)(self, (stream, act0, passes, zero), jnp.arange(steps))
    out_BxTxC, ponder = act_lib.act_finalize(act, stream[0])
    return out_BxTxC, passes, {'ponder_cost': ponder, 'steps_taken': taken}

  def _q_trunk(self, x_BxTxC, passes, steps, deterministic, full_compute):
    B = x_BxTxC.shape[0]
    min_steps_B = jnp.zeros((B,), jnp.int32)
    if not deterministic and self.config.halt_exploration_prob > 0:
      explore_key, steps_key = jax.random.split(self.make_rng('dropout'))
      explore_B = jax.random.bernoulli(explore_key, self.config.halt_exploration_prob, (B,))
      min_steps_B = jnp.where(explore_B, jax.random.randint(steps_key, (B,), 1, steps + 1), 0)
    # The Q-head reads position 0. Decoding a later token, position 0 is only
    # in the cache: the step count the head fixed at prefill stops instead.
    reads_q, last_step = (True, steps) if passes.kv is None else (passes.kv.index == 0, passes.kv.steps)

    # Decoding, each sequence stops at its own halting step, as if decoded
    # alone (the reference's evaluator): a halted sequence's streams freeze
    # while the batch runs on. Its cache entries past that step are never
    # read by a step it runs. Batch-level halting couples sequences; this
    # keeps the batch (and the pass counter that indexes the cache) whole.
    # Every step then runs: skipping under `cond` would copy the cache.
    freeze = passes.kv is not None and not full_compute

    def step_fn(s, mdl, carry):
      stream, halted_B, passes, taken = carry
      new_stream, passes = mdl._step(x_BxTxC, stream, s, passes, deterministic)
      if freeze:
        new_stream = jax.tree.map(lambda new, old: jnp.where(halted_B[:, None, None], old, new),
                                  new_stream, stream)
      q_B = mdl.q_halt(new_stream[0][:, 0])[:, 0]
      halts_B = (reads_q & (q_B > 0) & (s + 1 >= min_steps_B)) | (s + 1 >= last_step)
      taken = taken + (~halted_B if freeze else 1)
      return new_stream, halted_B | halts_B, passes, taken

    def body(mdl, carry, s):
      done = jnp.all(carry[1])
      return mdl._maybe_skip(done, functools.partial(step_fn, s), carry, full_compute or freeze), None

    zero = jnp.zeros((B,) if freeze else (), jnp.int32)
    carry0 = (self._stream_init(x_BxTxC), jnp.zeros((B,), bool), passes, zero)
    (stream, _, passes, taken), _ = SCAN(body)(self, carry0, jnp.arange(steps))
    if passes.kv is not None:
      passes = passes._replace(kv=passes.kv._replace(steps=jnp.broadcast_to(taken, (B,))))
    return stream[0], passes, {'steps_taken': taken}


def init_params(model: RecursiveLM, key: jax.Array) -> Any:
  """Fresh params under jit: eager Flax init compiles op by op and takes seconds.

  Values depend on `key` only (the position table is always block_size long).
  """
  idx_1xT = jnp.zeros((1, model.config.block_size), jnp.int32)
  return jax.jit(model.init)(key, idx_1xT)['params']


def build_model(config: ModelConfig | Any) -> RecursiveLM:
  """The registry's one entry point: a ModelConfig (or mapping) to its module."""
  if not isinstance(config, ModelConfig):
    config = ModelConfig.from_mapping(config)
  return RecursiveLM(config, get_rung(config.name))
