"""The seven rungs of the paper's ladder, as one Flax module plus a recipe each.

Every rung is embeddings -> trunk -> final LayerNorm -> LM head. The trunks
differ along three independent axes, which the `Rung` recipe names:

  stream   'single': h <- block(h + e_s)                          (rungs 1-4)
           'dual':   H cycles of [L x z <- block(x + y + z + e_s)],
                     then y <- block(y + z + e_s)                  (rungs 5-7)
  halting  'none' (fixed steps), 'act' (Graves ACT on the stream), 'q' (TRM
           Q-head at position 0, batch-level stop)
  nested   H, L from the config, y/z detached where the recipe's gradient reach
           cuts (the paper's: at each step start and before the last cycle;
           `artrm.models.recipe`) (rungs 6-7); otherwise H = L = 1.

All loops are `nn.scan` (compile time does not grow with steps); the early
stop of ACT and TRM is an `nn.cond` inside the scan that skips the block work
(with seeds vmapped, once every seed has halted: `seed_axis`). Training `trm`,
whose steps are cut apart, differentiates only its last executed step.
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

from artrm import one_off
from artrm.models import act as act_lib
from artrm.models import positions
from artrm.models.block import INIT, KVSlot, block_class, dense, layer_norm, rms_normalize
from artrm.models.config import ModelConfig, Rung, get_rung
from artrm.models.recipe import GRAD_REACH, Recipe, last_k_cut, steps_cut_apart

Aux = dict[str, Any]


class KVCache(NamedTuple):
  """Keys and values of every block pass (axis P) for the positions decoded so far."""

  key_PxBxHxSxD: jax.Array
  value_PxBxHxSxD: jax.Array
  index: jax.Array  # int32: positions cached, i.e. the position of the next token
  steps: jax.Array  # int32 [B]: TRM's step count per sequence, fixed by the Q-head at prefill
  digits: jax.Array  # int32 [B]: the last cached token's digit index (`positions.digit_index`)


class Streams(NamedTuple):
  """The streams a step carries: y, the one read out (single-stream rungs' only one), and
  z, the latent of dual-stream rungs (None in single-stream ones)."""

  y: jax.Array
  z: jax.Array | None = None


class Passes(NamedTuple):
  """Block passes executed so far, what they index: when decoding, the KV cache;
  when training, the forward's dropout key (a pass's key is it folded with the count)."""

  count: jax.Array
  kv: KVCache | None = None
  dropout_key: jax.Array | None = None


def apply_block(block: nn.Module, h_BxTxC, passes: Passes, deterministic):
  """One block pass; when decoding, it reads and extends this pass's slice of the cache."""
  count, kv, key = passes
  slot = None if kv is None else KVSlot(kv.key_PxBxHxSxD, kv.value_PxBxHxSxD, count, kv.index)
  rng = None if key is None else jax.random.fold_in(key, count)
  out_BxTxC, slot = block(h_BxTxC, deterministic, slot, rng)
  if kv is not None:
    kv = kv._replace(key_PxBxHxSxD=slot.key_PxBxHxSxD, value_PxBxHxSxD=slot.value_PxBxHxSxD)
  return out_BxTxC, passes._replace(count=count + 1, kv=kv)


class _ActCarry(NamedTuple):
  stream: Streams
  act: act_lib.ACTState
  passes: Passes
  taken: jax.Array


class _Replay(NamedTuple):
  """The latest step's input, to run it again with gradient (`_q_trunk`, steps cut apart)."""

  s: jax.Array
  stream: Streams
  count: jax.Array


class _QCarry(NamedTuple):
  stream: Streams
  halted_B: jax.Array
  passes: Passes
  taken: jax.Array
  latest: _Replay | None = None


class _QTrainedCarry(NamedTuple):
  stream: Streams
  halted_BxT: jax.Array
  out_BxTxC: jax.Array
  passes: Passes
  taken_BxT: jax.Array


# Dropout keys come with `Passes`, so no loop splits Flax's 'dropout' stream.
SCAN = functools.partial(nn.scan, variable_broadcast='params', split_rngs={'params': False})


class _LayerStep(nn.Module):
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
    h_BxTxC, passes = carry
    block = block_class(self.remat)(
      self.n_head, self.dropout, self.mixer, self.max_len, self.dtype, self.rope, name='block'
    )
    return apply_block(block, h_BxTxC, passes, deterministic), None


class RecursiveLM(nn.Module):
  """A decoder of the ladder; `rung` picks the trunk, `config` the sizes, `recipe`
  the training ingredients that act inside the forward (`artrm.models.recipe`)."""

  config: ModelConfig
  rung: Rung
  recipe: Recipe = Recipe()
  # The vmap axis name over seeds, when the caller vmaps several (`train.over_seeds`).
  seed_axis: str | None = None

  def setup(self):
    cfg, rung, recipe = self.config, self.rung, self.recipe
    embed_init = nn.initializers.normal(stddev=recipe.embed_init_std)
    self.tok_emb = nn.Embed(cfg.vocab_size, cfg.n_embd, embedding_init=embed_init, dtype=self.dtype)
    if cfg.pos_encoding == 'learned':
      self.pos_emb = self.param('pos_emb', embed_init, (cfg.block_size, cfg.n_embd))
    if cfg.pos_encoding == 'abacus':
      self.abacus_emb = self.param(
        'abacus_emb', embed_init, (positions.abacus_rows(cfg), cfg.n_embd)
      )
    if self.uses_step_embeddings:
      self.step_emb = self.param('step_emb', INIT, (rung.default_steps(cfg), cfg.n_embd))
    rope = cfg.pos_encoding == 'rope'
    block_args = (cfg.n_head, cfg.dropout, recipe.mixer, cfg.block_size, self.dtype, rope)
    if rung.tied:
      self.block = block_class(cfg.remat)(*block_args)
    else:
      self.blocks = nn.scan(
        _LayerStep,
        variable_axes={'params': 0},
        in_axes=nn.broadcast,
        split_rngs={'params': True},
        length=cfg.n_layer,
      )(cfg.n_head, cfg.dropout, cfg.remat, *block_args[2:])
    if rung.stream == 'dual':
      # TRM's fixed y0 / z0: std-1 draws that the optimizer never moves
      # (`train.make_optimizer` masks them out) and no gradient reaches.
      init = nn.initializers.normal(stddev=1.0) if recipe.fixed_init else INIT
      self.y_init = self.param('y_init', init, (cfg.n_embd,))
      self.z_init = self.param('z_init', init, (cfg.n_embd,))
    # The halting heads stay float32: their inputs are cast up, and a halting
    # decision is a threshold on their output.
    if rung.halting == 'act':
      self.act_halt = nn.Dense(
        1,
        kernel_init=INIT,
        name='act_halt',
        dtype=jnp.float32,
        bias_init=nn.initializers.constant(recipe.act_halt_bias),
      )
    if rung.halting == 'q':
      self.q_halt = nn.Dense(
        1,
        kernel_init=nn.initializers.zeros,
        dtype=jnp.float32,
        bias_init=nn.initializers.constant(-5.0),
        name='q_halt',
      )
    self.ln_f = layer_norm('ln_f', self.dtype)
    self.lm_head = dense(cfg.vocab_size, 'lm_head', self.dtype)

  @property
  def dtype(self) -> jnp.dtype:
    return jnp.dtype(self.config.dtype)

  @property
  def uses_step_embeddings(self) -> bool:
    return self.rung.step_embeddings and self.config.use_step_embeddings

  @property
  def halting(self) -> str:
    """The trunk: the rung's halting, or 'q_trained' when the recipe trains the Q-head."""
    return 'q_trained' if self.recipe.trains_halting else self.rung.halting

  @property
  def batch_coupled(self) -> bool:
    """The paper's TRM halts when the whole batch has: one sequence's output
    depends on the others (a trained Q-head halts per position instead)."""
    return self.halting == 'q'

  @property
  def steps_cut_apart(self) -> bool:
    return steps_cut_apart(self.rung, self.config, self.recipe)

  def passes_per_forward(self, steps: int | None = None) -> int:
    """Block passes of a forward that runs every step of every supervision pass."""
    return self.recipe.n_sup * self.rung.block_passes(self.config, steps)

  def __call__(
    self,
    idx_BxT: jax.Array,
    *,
    deterministic: bool = True,
    inference_steps: int | None = None,
    full_compute: bool = False,
    cache: KVCache | None = None,
    carry=None,
    sup_passes: int | None = None,
  ) -> tuple[jax.Array, Aux]:
    """Returns next-token logits [B, T, V] and aux metrics of the trunk.

    `inference_steps` runs more (or fewer) steps than trained, reusing the last
    step embedding past the table; `full_compute` disables every early stop.
    With `cache` (`artrm.evaluation.decoding.init_cache`), idx holds the tokens at positions
    cache.index.., the earlier ones being cached; aux['cache'] then has them added.

    Deep supervision: `sup_passes` (default recipe.n_sup) supervision passes
    run in turn, each from the detached streams the last one ended with; the
    first starts from `carry` (the `Streams` of `aux['carry']`) or from y0 / z0.
    Training runs one pass per call and carries the streams itself.
    """
    cfg = self.config
    sup_passes = self.recipe.n_sup if sup_passes is None else sup_passes
    T = idx_BxT.shape[1]
    if T > cfg.block_size:
      raise ValueError(
        f'Sequence length {T} exceeds block_size={cfg.block_size}: '
        'raise model.block_size or shorten the input.'
      )
    steps = inference_steps or self.rung.default_steps(cfg)
    if not self.rung.tied and steps != cfg.n_layer:
      raise ValueError(
        f'{cfg.name} has {cfg.n_layer} distinct blocks; it cannot run '
        f'{steps} inference steps. Use a weight-tied rung for step scaling.'
      )
    if cache is not None:
      need = sup_passes * self.rung.block_passes(cfg, steps)
      if cache.key_PxBxHxSxD.shape[0] < need:
        # dynamic_update_slice would clamp the pass index and overwrite silently.
        raise ValueError(
          f'The KV cache holds {cache.key_PxBxHxSxD.shape[0]} block passes but '
          f'{steps} steps x {sup_passes} supervision passes run {need}: build it '
          'with decoding.init_cache(model, ..., inference_steps) for these steps.'
        )
      if cache.key_PxBxHxSxD.dtype != self.dtype:
        raise ValueError(
          f'The KV cache is {cache.key_PxBxHxSxD.dtype} but model.dtype is '
          f'{cfg.dtype}: build it with decoding.init_cache(model, ...).'
        )
    forward = functools.partial(
      self._forward, idx_BxT, steps, deterministic, full_compute, cache, carry, sup_passes
    )
    if cfg.matmul_precision == 'default':  # whatever JAX is configured with
      return forward()
    with jax.default_matmul_precision(cfg.matmul_precision):
      return forward()

  def embed(
    self,
    idx_BxT: jax.Array,
    start: jax.Array | int = 0,
    digits_B: jax.Array | None = None,
    deterministic: bool = True,
  ) -> jax.Array:
    """The input x every rung starts from: token embeddings plus the position signal of
    model.pos_encoding (`positions`) for positions start.. (`digits_B`: the digit index
    of the token before them), at unit RMS with recipe.input_norm or scaled by
    recipe.input_scale (`model.apply(..., method='embed')`)."""
    x_BxTxC = self.tok_emb(idx_BxT)
    if self.config.pos_encoding == 'learned':
      x_BxTxC = x_BxTxC + jax.lax.dynamic_slice_in_dim(
        self.pos_emb.astype(self.dtype), start, idx_BxT.shape[1]
      )
    if self.config.pos_encoding == 'abacus':
      index_BxT = positions.abacus_index(
        idx_BxT, digits_B, self._abacus_offset(idx_BxT.shape[0], deterministic)
      )
      x_BxTxC = x_BxTxC + self.abacus_emb.astype(self.dtype)[index_BxT]
    if self.recipe.input_norm:
      return rms_normalize(x_BxTxC)
    return x_BxTxC * self.recipe.input_scale if self.recipe.input_scale else x_BxTxC

  def _abacus_offset(self, B: int, deterministic: bool) -> jax.Array:
    """Each sequence's abacus offset: uniform in 0..model.abacus_max_offset in training
    (keys from the `dropout` RNG stream), 0 in evaluation."""
    top = self.config.abacus_max_offset
    if deterministic or not top:
      return jnp.zeros((B,), jnp.int32)
    return jax.random.randint(self.make_rng('dropout'), (B,), 0, top + 1)

  def _forward(self, idx_BxT, steps, deterministic, full_compute, cache, carry, sup_passes):
    cfg = self.config
    start, T = (0 if cache is None else cache.index), idx_BxT.shape[1]
    digits_B = None if cache is None else cache.digits
    x_BxTxC = self.embed(idx_BxT, start, digits_B, deterministic)
    if cache is not None and self.halting in ('act', 'q_trained'):
      # Halted positions keep evolving and later positions attend to every
      # pass of theirs: a new token must fill the cache at all steps.
      full_compute = True
    trunk = functools.partial(
      TRUNKS[self.halting],
      x_BxTxC=x_BxTxC,
      steps=steps,
      deterministic=deterministic,
      full_compute=full_compute,
    )
    stream = self._stream_init(x_BxTxC) if carry is None else carry
    dropout_key = None if deterministic or not cfg.dropout else self.make_rng('dropout')
    passes = Passes(jnp.zeros((), jnp.int32), cache, dropout_key)
    if sup_passes == 1:
      h_BxTxC, stream, passes, aux = trunk(self, stream=stream, passes=passes)
    else:

      def sup_pass(mdl, c, _):
        stream, passes = c
        h_BxTxC, stream, passes, aux = trunk(
          mdl, stream=jax.lax.stop_gradient(stream), passes=passes
        )
        return (stream, passes), (h_BxTxC, aux)

      (stream, passes), (h_SxBxTxC, aux_S) = SCAN(sup_pass, length=sup_passes)(
        self, (stream, passes), None
      )
      h_BxTxC, aux = jax.tree.map(lambda a: a[-1], (h_SxBxTxC, aux_S))
    aux['block_passes'] = passes.count
    if self.rung.stream == 'dual':
      aux['carry'] = stream
    if cache is not None:
      aux['cache'] = passes.kv._replace(
        index=start + T, digits=positions.digit_index(idx_BxT, digits_B)[:, -1]
      )
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
      # With input injection every pass adds x, so the stream starts empty.
      return Streams(jnp.zeros_like(x_BxTxC) if self.config.input_injection else x_BxTxC)
    fixed = jax.lax.stop_gradient if self.recipe.fixed_init else (lambda v: v)
    return Streams(
      *(
        jnp.broadcast_to(fixed(v).astype(self.dtype), x_BxTxC.shape)
        for v in (self.y_init, self.z_init)
      )
    )

  def _step(self, x_BxTxC, stream, s, passes, deterministic, steps):
    """One step: returns (new streams, passes); the readout state is their y."""
    e_C = self._step_embedding(s)
    if self.rung.stream == 'single':
      h_BxTxC = stream.y + x_BxTxC if self.config.input_injection else stream.y
      h_BxTxC, passes = self._apply_block(h_BxTxC + e_C, passes, deterministic)
      return Streams(h_BxTxC), passes
    return self._dual_step(x_BxTxC, stream, e_C, passes, deterministic, s, steps)

  def _dual_step(self, x_BxTxC, stream, e_C, passes, deterministic, s, steps):
    """H cycles of [L z-updates, one y-update], as flat scans of block passes.

    A pass updates z from x + y + z, or y from y + z (no x, as in the paper's
    code); one scan over that pattern keeps a single block in the program,
    which halves compile time against nested z / y scans. Nested rungs detach
    (y, z) where the recipe's gradient reach cuts (`recipe.GRAD_REACH`): each
    static cut starts a new scan, so the passes before it never enter the
    backward pass (the paper's rule: step start and last cycle).
    """
    H, L = self.rung.cycles(self.config)
    per_step = H * (L + 1)
    cuts = GRAD_REACH[self.recipe.grad_reach](per_step, L + 1) if self.rung.nested else ()
    norm = rms_normalize if self.recipe.carry_norm else (lambda v: v)

    def sub_step(mdl, carry, xs):
      updates_z, j = xs
      (y, z), n = carry
      cut = last_k_cut(mdl.recipe, s, j, steps, per_step)
      if cut is not None:
        y, z = (jnp.where(cut, jax.lax.stop_gradient(a), a) for a in (y, z))
      new, n = mdl._apply_block(
        jnp.where(updates_z, x_BxTxC + y + z, y + z) + e_C, n, deterministic
      )
      new = norm(new)
      return (Streams(jnp.where(updates_z, y, new), jnp.where(updates_z, new, z)), n), None

    pattern = jnp.tile(jnp.arange(L + 1) < L, H)
    bounds = sorted({0, per_step, *cuts})
    for a, b in zip(bounds, bounds[1:]):
      if a in cuts:
        stream = jax.lax.stop_gradient(stream)
      (stream, passes), _ = SCAN(sub_step)(self, (stream, passes), (pattern[a:b], jnp.arange(a, b)))
    return stream, passes

  def _maybe_skip(self, done, step_fn, carry, full_compute):
    """Runs `step_fn(mdl, carry)` unless `done`; skipping keeps carry as is."""
    if full_compute or self.is_initializing():
      return step_fn(self, carry)
    if self.seed_axis is None:
      return nn.cond(done, lambda mdl, c: c, step_fn, self, carry)
    # Under vmap a per-seed `done` turns the cond into a select that runs
    # every step: skip when every seed is done, and keep a done seed's carry.
    every_seed_done = jax.lax.pmin(done.astype(jnp.int32), self.seed_axis) > 0

    def step_or_keep(mdl, c):
      return jax.tree.map(functools.partial(jnp.where, done), c, step_fn(mdl, c))

    return nn.cond(every_seed_done, lambda mdl, c: c, step_or_keep, self, carry)

  # -- trunks: how steps are looped and read out --------------------------------
  # Each takes the initial streams and returns (readout state, final streams,
  # passes, aux); `TRUNKS` maps each halting kind to its trunk.

  def _none_trunk(self, x_BxTxC, stream, passes, steps, deterministic, full_compute):
    if not self.rung.tied:
      (h_BxTxC, passes), _ = self.blocks((x_BxTxC, passes), deterministic)
      return h_BxTxC, Streams(h_BxTxC), passes, {'steps_taken': jnp.asarray(steps)}

    def body(mdl, carry, s):
      stream, n = carry
      return mdl._step(x_BxTxC, stream, s, n, deterministic, steps), None

    (stream, passes), _ = SCAN(body)(self, (stream, passes), jnp.arange(steps))
    return stream.y, stream, passes, {'steps_taken': jnp.asarray(steps)}

  def _act_trunk(self, x_BxTxC, stream, passes, steps, deterministic, full_compute):
    act0 = act_lib.act_init(x_BxTxC)
    zero = jnp.zeros((), jnp.int32)

    def step_fn(s, mdl, carry):
      stream, passes = mdl._step(x_BxTxC, carry.stream, s, carry.passes, deterministic, steps)
      p_BxT = jax.nn.sigmoid(mdl.act_halt(stream.y)[..., 0])
      return _ActCarry(
        stream, act_lib.act_update(carry.act, p_BxT, stream.y), passes, carry.taken + 1
      )

    def body(mdl, carry, s):
      done = jnp.all(carry.act.halted_BxT)
      return mdl._maybe_skip(done, functools.partial(step_fn, s), carry, full_compute), None

    (stream, act, passes, taken), _ = SCAN(body)(
      self, _ActCarry(stream, act0, passes, zero), jnp.arange(steps)
    )
    out_BxTxC, ponder = act_lib.act_finalize(act, stream.y)
    return out_BxTxC, stream, passes, {'ponder_cost': ponder, 'steps_taken': taken}

  def _min_steps(self, B: int, steps: int, deterministic: bool) -> jax.Array:
    """TRM's halting exploration: with halt_exploration_prob, a sequence must run
    a random 1..steps steps before it may halt (training only)."""
    if deterministic or self.config.halt_exploration_prob <= 0:
      return jnp.zeros((B,), jnp.int32)
    explore_key, steps_key = jax.random.split(self.make_rng('dropout'))
    explore_B = jax.random.bernoulli(explore_key, self.config.halt_exploration_prob, (B,))
    return jnp.where(explore_B, jax.random.randint(steps_key, (B,), 1, steps + 1), 0)

  def _q_trunk(self, x_BxTxC, stream, passes, steps, deterministic, full_compute):
    B = x_BxTxC.shape[0]
    min_steps_B = self._min_steps(B, steps, deterministic)
    # The Q-head reads position 0. Decoding a later token, position 0 is only
    # in the cache: the step count the head fixed at prefill stops instead
    # (with several supervision passes, the last pass's count stops them all).
    if passes.kv is None:
      reads_q, last_step = True, steps
    else:
      prefill = passes.kv.index == 0
      reads_q, last_step = prefill, jnp.where(prefill, steps, passes.kv.steps)

    # Decoding, each sequence stops at its own halting step, as if decoded
    # alone (the reference's evaluator): a halted sequence's streams freeze
    # while the batch runs on. Its cache entries past that step are never
    # read by a step it runs. Batch-level halting couples sequences; this
    # keeps the batch (and the pass counter that indexes the cache) whole.
    # Every step then runs: skipping under `cond` would copy the cache.
    freeze = passes.kv is not None and not full_compute

    # Training with steps cut apart, only the last executed step's output
    # reaches the loss. The steps before it run in a scan whose outputs are
    # detached, so the backward pass skips them instead of running them on
    # zero cotangents; the latest step's input is kept to run it again (its
    # passes' dropout keys too) should the batch halt early.
    split = not deterministic and passes.kv is None and steps > 1 and self.steps_cut_apart

    def step_fn(s, mdl, carry):
      stream, halted_B = carry.stream, carry.halted_B
      new_stream, new_passes = mdl._step(x_BxTxC, stream, s, carry.passes, deterministic, steps)
      if freeze:
        new_stream = jax.tree.map(
          lambda new, old: jnp.where(halted_B[:, None, None], old, new), new_stream, stream
        )
      q_B = mdl.q_halt(new_stream.y[:, 0])[:, 0]
      halts_B = (reads_q & (q_B > 0) & (s + 1 >= min_steps_B)) | (s + 1 >= last_step)
      taken = carry.taken + (~halted_B if freeze else 1)
      latest = _Replay(s, stream, carry.passes.count) if split else None
      return _QCarry(new_stream, halted_B | halts_B, new_passes, taken, latest)

    def body(mdl, carry, s):
      done = jnp.all(carry.halted_B)
      return mdl._maybe_skip(
        done, functools.partial(step_fn, s), carry, full_compute or freeze
      ), None

    zero = jnp.zeros((B,) if freeze else (), jnp.int32)
    carry0 = _QCarry(stream, jnp.zeros((B,), bool), passes, zero)
    if not split:
      (stream, _, passes, taken, _), _ = SCAN(body)(self, carry0, jnp.arange(steps))
    else:
      carry0 = carry0._replace(latest=_Replay(zero, stream, passes.count))
      (stream, halted_B, passes, taken, latest), _ = SCAN(body)(self, carry0, jnp.arange(steps - 1))
      # The last step, or the halting step again (same pass indices: same dropout).
      early = jnp.all(halted_B)
      s, stream, count = jax.tree.map(
        lambda a, b: jnp.where(early, a, b), latest, _Replay(steps - 1, stream, passes.count)
      )
      stream, passes = self._step(
        x_BxTxC,
        jax.lax.stop_gradient(stream),
        s,
        passes._replace(count=count),
        deterministic,
        steps,
      )
      taken = taken + ~early
    if passes.kv is not None:
      passes = passes._replace(kv=passes.kv._replace(steps=jnp.broadcast_to(taken, (B,))))
    return stream.y, stream, passes, {'steps_taken': taken}

  def _q_trained_trunk(self, x_BxTxC, stream, passes, steps, deterministic, full_compute):
    """TRM halting with a trained Q-head, per position (the recipe's halt_loss_weight).

    After each step the head reads y at every position; a position's output is
    y at the first step whose q > 0 (after its sequence's exploration minimum),
    else at the last step. Streams keep evolving after a position halts, as in
    ACT, so a causal forward gives each position what it gets decoded alone,
    with or without the cache. aux['halt'] holds each step's q and logits for
    the halting loss (`artrm.training.train.halt_loss`).
    """
    B, T = x_BxTxC.shape[:2]
    min_steps_Bx1 = self._min_steps(B, steps, deterministic)[:, None]

    def body(mdl, carry, s):
      stream, halted_BxT, out_BxTxC, passes, taken_BxT = carry
      step_fn = lambda m, c: m._step(x_BxTxC, c[0], s, c[1], deterministic, steps)
      # Training reads every step (the loss needs each q): no early stop there.
      stream, passes = mdl._maybe_skip(
        jnp.all(halted_BxT), step_fn, (stream, passes), full_compute or not deterministic
      )
      y_BxTxC = stream.y
      q_BxT = mdl.q_halt(y_BxTxC)[..., 0]
      running_BxT = ~halted_BxT
      out_BxTxC = jnp.where(running_BxT[..., None], y_BxTxC, out_BxTxC)
      halted_BxT = halted_BxT | ((q_BxT > 0) & (s + 1 >= min_steps_Bx1))
      carry = _QTrainedCarry(stream, halted_BxT, out_BxTxC, passes, taken_BxT + running_BxT)
      return carry, (q_BxT, mdl.lm_head(mdl.ln_f(y_BxTxC)))

    carry0 = _QTrainedCarry(
      stream,
      jnp.zeros((B, T), bool),
      jnp.zeros_like(x_BxTxC),
      passes,
      jnp.zeros((B, T), jnp.int32),
    )
    (stream, _, out_BxTxC, passes, taken_BxT), (q_SxBxT, logits_SxBxTxV) = SCAN(body)(
      self, carry0, jnp.arange(steps)
    )
    aux = {
      'steps_taken': jnp.mean(taken_BxT.astype(jnp.float32)),
      'halt': {'q_SxBxT': q_SxBxT, 'logits_SxBxTxV': logits_SxBxTxV},
    }
    return out_BxTxC, stream, passes, aux


# The trunk of each halting kind (`RecursiveLM.halting`).
TRUNKS = {
  'none': RecursiveLM._none_trunk,
  'act': RecursiveLM._act_trunk,
  'q': RecursiveLM._q_trunk,
  'q_trained': RecursiveLM._q_trained_trunk,
}


def fresh_params(model: RecursiveLM, key: jax.Array) -> Any:
  """Fresh params; values depend on `key` only (the position table is always block_size
  long). Call it under jit (`init_params`): eager Flax init compiles op by op."""
  return model.init(key, jnp.zeros((1, model.config.block_size), jnp.int32))['params']


def init_params(model: RecursiveLM, key: jax.Array) -> Any:
  """`fresh_params` as a one-off program (`artrm.one_off`)."""
  return one_off.jit(functools.partial(fresh_params, model))(key)


def build_model(config: ModelConfig | Any, recipe: Recipe | Any = None) -> RecursiveLM:
  """The registry's one entry point: a ModelConfig (or mapping) and a recipe to its module."""
  if not isinstance(config, ModelConfig):
    config = ModelConfig.from_mapping(config)
  if not isinstance(recipe, Recipe):
    recipe = Recipe.from_mapping(recipe)
  rung = get_rung(config.name)
  return RecursiveLM(config, rung, recipe.check(config.name, rung.block_passes(config)))
