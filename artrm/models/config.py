"""What a model is, as data: sizes (`ModelConfig`), the seven rungs (`Rung` specs
of one module) and the paper's compute-budget rule.

No jax here: tooling that only names rungs or counts passes (results,
reports, suites) imports this module alone.

`dtype` is the compute dtype of activations and matmuls; params stay float32
and softmax, LayerNorm statistics, the halting heads and the loss run in
float32 whatever it is. `matmul_precision` is how float32 matmuls run: JAX's
'default' lets GPUs from Ampere on use TF32 tensor cores (CPUs compute full
float32 either way); 'float32' asks for full float32, as torch does by default.

The paper equalises rungs by block passes (applications of the shared block
in one forward pass), not by parameters or FLOPs; `normalize_budget` is its
`--compute-budget` rule, fallback order included (paper-spec "Compute
normalisation").
"""

import dataclasses
import logging
from typing import Any, Mapping

DTYPES = ('float32', 'bfloat16')
# Values of jax.default_matmul_precision for float32 matmuls ('default': JAX's own choice).
MATMUL_PRECISIONS = ('default', 'tensorfloat32', 'float32')
# Where a token is, as the model sees it (`artrm.models.positions`; 'learned': the paper's).
POS_ENCODINGS = ('learned', 'none', 'rope', 'abacus', 'abacus_rope')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  name: str = 'gpt'
  vocab_size: int = 14
  block_size: int = 180
  n_embd: int = 384
  n_head: int = 6
  n_layer: int = 4
  dropout: float = 0.0
  n_outer_loops: int = 2  # H: cycles per ACT step (ut_level2, trm)
  n_inner_loops: int = 2  # L: z-updates per cycle (ut_level2, trm)
  max_act_steps: int = 0  # 0 = n_layer (the paper's default)
  use_step_embeddings: bool = True
  ponder_cost_weight: float = 0.01
  halt_exploration_prob: float = 0.25
  remat: str = 'none'  # activations kept for backward: block.REMAT_POLICIES
  dtype: str = 'float32'  # compute dtype (DTYPES); params are float32 always
  matmul_precision: str = 'default'  # float32 matmuls (MATMUL_PRECISIONS)
  # Beyond the paper (off: its behaviour), for length generalisation (docs/length.md):
  pos_encoding: str = 'learned'  # POS_ENCODINGS (artrm.models.positions)
  abacus_max_offset: int = 0  # pos_encoding='abacus': training offsets drawn from 0..this
  abacus_max_gap: int = 1  # pos_encoding='abacus': training index gaps drawn from 1..this
  abacus_count_down: bool = False  # pos_encoding='abacus': a run after a run counts down
  abacus_separator: bool = False  # pos_encoding='abacus': the token after a run reads n + 1
  input_injection: bool = False  # single-stream tied rungs: x added at every pass

  def __post_init__(self):
    if self.dtype not in DTYPES:
      raise ValueError(f'Unknown model.dtype {self.dtype!r}; choose one of {DTYPES}.')
    if self.pos_encoding not in POS_ENCODINGS:
      raise ValueError(
        f'Unknown model.pos_encoding {self.pos_encoding!r}; choose one of {POS_ENCODINGS}.'
      )
    if self.pos_encoding in ('rope', 'abacus_rope') and (self.n_embd // self.n_head) % 2:
      raise ValueError(
        f'model.pos_encoding={self.pos_encoding} rotates pairs of channels, but a head has '
        f'{self.n_embd // self.n_head}: choose n_embd / n_head even.'
      )
    if self.abacus_max_offset < 0 or (self.abacus_max_offset and self.pos_encoding != 'abacus'):
      raise ValueError(
        f'model.abacus_max_offset={self.abacus_max_offset} shifts the rows of '
        'pos_encoding=abacus (abacus_rope scores index differences, which a shift leaves '
        'alone) and must be >= 0: set it to 0 or use pos_encoding=abacus.'
      )
    abacus = self.pos_encoding in ('abacus', 'abacus_rope')
    if self.abacus_max_gap < 1 or (self.abacus_max_gap > 1 and not abacus):
      raise ValueError(
        f'model.abacus_max_gap={self.abacus_max_gap} applies to pos_encoding=abacus or '
        'abacus_rope only and must be >= 1: set it to 1 or use pos_encoding=abacus.'
      )
    for switch in ('abacus_count_down', 'abacus_separator'):
      if getattr(self, switch) and not abacus:
        raise ValueError(
          f'model.{switch} applies to pos_encoding=abacus or abacus_rope only: set it '
          'False or use pos_encoding=abacus.'
        )
    rung = get_rung(self.name) if self.input_injection else None
    if rung and (rung.stream != 'single' or not rung.tied):
      has = 'injects x at every z-update' if rung.tied else 'has distinct blocks, no recursion'
      raise ValueError(
        f'model.input_injection re-injects x into a recursion of one stream, but {self.name} '
        f'{has}: use gpt_level1, gpt_level2 or ut, or input_injection=False.'
      )
    if self.matmul_precision not in MATMUL_PRECISIONS:
      raise ValueError(
        f'Unknown model.matmul_precision {self.matmul_precision!r}; choose one '
        f'of {MATMUL_PRECISIONS}.'
      )

  @property
  def act_steps(self) -> int:
    return self.max_act_steps or self.n_layer

  @classmethod
  def from_mapping(cls, mapping: Mapping[str, Any]) -> 'ModelConfig':
    """Builds from a dict / ConfigDict, rejecting unknown keys with their names."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - fields)
    if unknown:
      raise ValueError(f'Unknown model config keys {unknown}; known keys: {sorted(fields)}.')
    return cls(**dict(mapping))


@dataclasses.dataclass(frozen=True)
class Rung:
  title: str
  stream: str = 'single'  # 'single' | 'dual'
  tied: bool = True  # one shared block (all but `gpt`)
  step_embeddings: bool = False
  halting: str = 'none'  # 'none' | 'act' | 'q'
  nested: bool = False  # H x L cycles with TRM's gradient rules

  def default_steps(self, cfg: ModelConfig) -> int:
    return cfg.act_steps if self.halting != 'none' else cfg.n_layer

  def cycles(self, cfg: ModelConfig) -> tuple[int, int]:
    """(H, L): cycles per step and z-updates per cycle (1, 1 unless nested)."""
    return (cfg.n_outer_loops, cfg.n_inner_loops) if self.nested else (1, 1)

  def passes_per_step(self, cfg: ModelConfig) -> int:
    if self.stream == 'single':
      return 1
    H, L = self.cycles(cfg)
    return H * (L + 1)

  def block_passes(self, cfg: ModelConfig, steps: int | None = None) -> int:
    """Passes of a forward that runs every step (`steps` defaults to trained)."""
    return self.passes_per_step(cfg) * (steps or self.default_steps(cfg))


RUNGS: dict[str, Rung] = {
  'gpt': Rung('Dense Transformer', tied=False),
  'gpt_level1': Rung('Iterative Transformer'),
  'gpt_level2': Rung('Iterative Step Transformer', step_embeddings=True),
  'ut': Rung('Universal Transformer (ACT)', step_embeddings=True, halting='act'),
  'ut_level1': Rung('Dual UT', stream='dual', step_embeddings=True, halting='act'),
  'ut_level2': Rung(
    'Dual Nested UT', stream='dual', step_embeddings=True, halting='act', nested=True
  ),
  'trm': Rung('Autoregressive TRM', stream='dual', step_embeddings=True, halting='q', nested=True),
}


def get_rung(name: str) -> Rung:
  if name not in RUNGS:
    raise ValueError(f'Unknown model {name!r}; choose one of {list(RUNGS)}.')
  return RUNGS[name]


def block_passes(config: ModelConfig, steps: int | None = None) -> int:
  """Passes of a forward of `config` that runs every step (`steps` defaults to trained)."""
  return get_rung(config.name).block_passes(config, steps)


def nested_candidates(H0: int, L0: int) -> list[tuple[int, int]]:
  """(H0, L0) first, then L from L0 down to 0 (outer) x H from H0 down to 1."""
  rest = [(H, L) for L in range(L0, -1, -1) for H in range(H0, 0, -1) if (H, L) != (H0, L0)]
  return [(H0, L0)] + rest


def normalize_budget(config: ModelConfig, budget: int) -> ModelConfig:
  """Returns `config` with n_layer (and H, L for nested rungs) set for `budget`.

  The config's n_outer_loops / n_inner_loops are the (H0, L0) start.
  """
  rung = get_rung(config.name)
  if budget < 1:
    raise ValueError(f'compute budget must be a positive number of block passes, got {budget}.')
  if config.max_act_steps and rung.halting != 'none':
    raise ValueError(
      f'max_act_steps={config.max_act_steps} is set, so the budget rule (which sets '
      'n_layer = steps) would not hold: set max_act_steps=0 or budget=0.'
    )
  if rung.stream == 'single':
    out = dataclasses.replace(config, n_layer=budget)
  elif not rung.nested:
    out = dataclasses.replace(config, n_layer=max(1, budget // 2))
  else:
    H0, L0 = config.n_outer_loops, config.n_inner_loops
    if H0 < 1 or L0 < 0:
      raise ValueError(f'(H, L) start must have H >= 1 and L >= 0, got ({H0}, {L0}).')
    fallback = None
    for H, L in nested_candidates(H0, L0):
      per_step = H * (L + 1)
      if budget % per_step == 0:
        fallback = (H, L, budget // per_step)
        break
      if fallback is None:
        fallback = (H, L, max(1, budget // per_step))
    H, L, n_layer = fallback
    if L == 0:
      logging.warning(
        'Budget %d resolves %s to L = 0 z-updates: x never enters the model, whose '
        "output then ignores the tokens (the paper's rule, kept as is). Pick a "
        'budget divisible by 2 or 3.',
        budget,
        config.name,
      )
    out = dataclasses.replace(config, n_layer=n_layer, n_outer_loops=H, n_inner_loops=L)
  if block_passes(out) > budget:
    raise ValueError(
      f'No configuration of {config.name} fits a budget of {budget} block passes: its '
      f'smallest step costs {get_rung(out.name).passes_per_step(out)} passes. Raise the budget.'
    )
  return out
