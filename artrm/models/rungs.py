"""The seven rungs of the paper's ladder, as one Flax module plus a `Rung` spec each.

Every rung is embeddings -> trunk -> final LayerNorm -> LM head. The trunks
differ along three independent axes, which the `Rung` spec names:

  stream   'single': h <- block(h + e_s)                          (rungs 1-4)
           'dual':   H cycles of [L x z <- block(x + y + z + e_s)],
                     then y <- block(y + z + e_s)                  (rungs 5-7)
  halting  'none' (fixed steps), 'act' (Graves ACT on the stream), 'q' (TRM
           Q-head at position 0, batch-level stop)
  nested   H, L from the config, y/z detached where the recipe's gradient reach
           cuts (the paper's: at each step start and before the last cycle;
           `artrm.models.recipe`) (rungs 6-7); otherwise H = L = 1.

This module holds what every rung shares: the parameters (`setup`), the
embedded input (`embed`), the checks of a call and the supervision passes
(`_forward`). A step's streams and block passes are in `artrm.models.streams`;
how steps are looped, halted and read out, one trunk per halting kind, in
`artrm.models.trunks`. All loops are `nn.scan` (compile time does not grow
with steps); the early stop of ACT and TRM is an `nn.cond` inside the scan
that skips the block work (with seeds vmapped, once every seed has halted:
`seed_axis`). Training `trm`, whose steps are cut apart, differentiates only
its last executed step. Each trunk also returns the number of block passes it
executed, threaded through the loops as a counter, so tests can check the
compute accounting.

`config.dtype` is the compute dtype of embeddings, streams, blocks and the LM
head (params stay float32); the halting heads, ACT's weighted output and the
returned logits are float32. `config.matmul_precision` wraps the forward in
`jax.default_matmul_precision`, so training, evaluation and decoding share it.

KV-cached decoding rides on that counter: in a forward that runs every step,
the count is the index of the block pass, and each pass (a `gpt` layer, a
tied step, a z- or y-update) attends to the cached keys/values of the earlier
positions at the same pass index. The cache travels with the counter
(`PassContext`), so the rung logic is the same with or without it.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from artrm import one_off
from artrm.models import positions
from artrm.models.block import INIT, block_class, dense, layer_norm, rms_normalize
from artrm.models.config import ModelConfig, Rung, get_rung
from artrm.models.recipe import Recipe, steps_cut_apart
from artrm.models.streams import SCAN, KVCache, LayerStep, PassContext, init_streams
from artrm.models.trunks import TRUNKS

Aux = dict[str, Any]


class RecursiveLM(nn.Module):
  """A decoder of the ladder; `rung` picks the trunk, `config` the sizes, `recipe`
  the training ingredients that act inside the forward (`artrm.models.recipe`)."""

  config: ModelConfig
  rung: Rung
  recipe: Recipe = Recipe()
  # The vmap axis name over seeds, when the caller vmaps several (`train_state.over_seeds`).
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
    rope = cfg.pos_encoding in ('rope', 'abacus_rope')
    block_args = (cfg.n_head, cfg.dropout, recipe.mixer, cfg.block_size, self.dtype, rope)
    if rung.tied:
      self.block = block_class(cfg.remat)(*block_args)
    else:
      self.blocks = nn.scan(
        LayerStep,
        variable_axes={'params': 0},
        in_axes=nn.broadcast,
        split_rngs={'params': True},
        length=cfg.n_layer,
      )(cfg.n_head, cfg.dropout, cfg.remat, *block_args[2:])
    if rung.stream == 'dual':
      # TRM's fixed y0 / z0: std-1 draws that the optimizer never moves
      # (`train_state.make_optimizer` masks them out) and no gradient reaches.
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
    steps = inference_steps or self.rung.default_steps(cfg)
    self._check_call(idx_BxT.shape[1], steps, cache, sup_passes)
    forward = functools.partial(
      self._forward, idx_BxT, steps, deterministic, full_compute, cache, carry, sup_passes
    )
    if cfg.matmul_precision == 'default':  # whatever JAX is configured with
      return forward()
    with jax.default_matmul_precision(cfg.matmul_precision):
      return forward()

  def _check_call(self, T: int, steps: int, cache: KVCache | None, sup_passes: int):
    """Refuses a call this module cannot run (T positions, `steps` steps, `cache`),
    with the change to make."""
    cfg = self.config
    if T > cfg.block_size:
      raise ValueError(
        f'Sequence length {T} exceeds block_size={cfg.block_size}: '
        'raise model.block_size or shorten the input.'
      )
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

  def embed(
    self,
    idx_BxT: jax.Array,
    start: jax.Array | int = 0,
    runs_Bx2: jax.Array | None = None,
    deterministic: bool = True,
  ) -> jax.Array:
    """The input x every rung starts from: token embeddings plus the position signal of
    model.pos_encoding (`positions`) for positions start.. (`runs_Bx2`: the digit runs
    of the token before them, `positions.digit_runs`), at unit RMS with recipe.input_norm or scaled by
    recipe.input_scale (`model.apply(..., method='embed')`)."""
    x_BxTxC = self.tok_emb(idx_BxT)
    if self.config.pos_encoding == 'learned':
      x_BxTxC = x_BxTxC + jax.lax.dynamic_slice_in_dim(
        self.pos_emb.astype(self.dtype), start, idx_BxT.shape[1]
      )
    if self.config.pos_encoding == 'abacus':
      index_BxT = self._abacus_index(idx_BxT, runs_Bx2, deterministic)
      x_BxTxC = x_BxTxC + self.abacus_emb.astype(self.dtype)[index_BxT]
    if self.recipe.input_norm:
      return rms_normalize(x_BxTxC)
    return x_BxTxC * self.recipe.input_scale if self.recipe.input_scale else x_BxTxC

  def _abacus_index(self, idx_BxT, runs_Bx2, deterministic: bool) -> jax.Array:
    """`positions.abacus_index` with this model's switches and training draws."""
    cfg = self.config
    return positions.abacus_index(
      idx_BxT,
      runs_Bx2,
      *self._abacus_draws(idx_BxT.shape[0], deterministic),
      count_down=cfg.abacus_count_down,
      separator=cfg.abacus_separator,
    )

  def _abacus_draws(self, B: int, deterministic: bool) -> tuple[jax.Array, jax.Array | None]:
    """Each sequence's abacus offset, uniform in 0..model.abacus_max_offset, and its
    index gaps, uniform in 1..model.abacus_max_gap (None where that is 1), in training
    (keys from the `dropout` RNG stream); offset 0 and no gaps in evaluation."""
    cfg = self.config
    offset_B, gaps_BxK = jnp.zeros((B,), jnp.int32), None
    if deterministic:
      return offset_B, gaps_BxK
    if cfg.abacus_max_offset:
      offset_B = jax.random.randint(self.make_rng('dropout'), (B,), 0, cfg.abacus_max_offset + 1)
    if cfg.abacus_max_gap > 1:
      shape = (B, cfg.block_size)
      gaps_BxK = jax.random.randint(self.make_rng('dropout'), shape, 1, cfg.abacus_max_gap + 1)
    return offset_B, gaps_BxK

  def _forward(self, idx_BxT, steps, deterministic, full_compute, cache, carry, sup_passes):
    """`__call__` once checked: the trunk of `halting` (`trunks.TRUNKS`) once per
    supervision pass, each from the detached streams the last one ended with."""
    cfg = self.config
    start, T = (0 if cache is None else cache.index), idx_BxT.shape[1]
    runs_Bx2 = None if cache is None else cache.digit_runs
    x_BxTxC = self.embed(idx_BxT, start, runs_Bx2, deterministic)
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
    stream = init_streams(self, x_BxTxC) if carry is None else carry
    dropout_key = None if deterministic or not cfg.dropout else self.make_rng('dropout')
    rope_BxT = None
    if cfg.pos_encoding == 'abacus_rope':
      rope_BxT = self._abacus_index(idx_BxT, runs_Bx2, deterministic)
    ctx = PassContext(jnp.zeros((), jnp.int32), cache, dropout_key, rope_BxT)
    if sup_passes == 1:
      h_BxTxC, stream, ctx, aux = trunk(self, stream=stream, ctx=ctx)
    else:

      def sup_pass(mdl, c, _):
        stream, ctx = c
        h_BxTxC, stream, ctx, aux = trunk(mdl, stream=jax.lax.stop_gradient(stream), ctx=ctx)
        return (stream, ctx), (h_BxTxC, aux)

      (stream, ctx), (h_SxBxTxC, aux_S) = SCAN(sup_pass, length=sup_passes)(
        self, (stream, ctx), None
      )
      h_BxTxC, aux = jax.tree.map(lambda a: a[-1], (h_SxBxTxC, aux_S))
    aux['block_passes'] = ctx.count
    if self.rung.stream == 'dual':
      aux['carry'] = stream
    if cache is not None:
      aux['cache'] = ctx.kv._replace(
        index=start + T, digit_runs=positions.digit_runs(idx_BxT, runs_Bx2)[:, -1]
      )
    return self.lm_head(self.ln_f(h_BxTxC)).astype(jnp.float32), aux


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
