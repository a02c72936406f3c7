"""How a rung is trained: the TRM recipe's ingredients as named switches.

The paper ports TRM's architecture to next-token models but not its training
recipe (../shared/docs/trm-recipe.md, shipped beside the repository). A
`Recipe` names each missing ingredient; every default is the paper's
behaviour, so `Recipe()` trains the seven rungs exactly as the paper's code.

An ingredient is one field here plus one small function where it acts:
  grad_reach, grad_last_k   `GRAD_REACH` below: where the carried (y, z) is cut
  fixed_init                `streams.init_streams`: std-1 constants as y0 / z0
  carry_norm                `streams.dual_step`: y and z RMS-normalised after each update
  input_norm                `RecursiveLM.embed`: the embedded input x at unit RMS
  input_scale               `RecursiveLM.embed`: x times a constant, not normalised
  embed_init_std            `RecursiveLM.setup`: the token / position embeddings' init std
  mixer                     `block.Block`: causal attention or a causal MLP mixer
  act_halt_bias             `RecursiveLM.setup`: the ACT halting head's initial bias
  halt_loss_weight, halt_target   `train_step.halt_loss`: the Q-head learns when to stop
  n_sup, sup_update         `train_step.train_step`: deep supervision over one batch
  ema_decay                 `train_state.ema_update`: the weights evaluation uses

`Recipe.check` refuses combinations that mean nothing for a rung before any
work is done. No jax here.
"""

import dataclasses
from typing import Any, Callable, Mapping

from artrm.models.config import ModelConfig, Rung, get_rung

# Gradient reach of the nested rungs: the passes of a step (of H * (L + 1))
# before which the carried (y, z) is detached. Static cuts split a step into
# scans, so the passes before a cut are not even traced for the backward pass.
GRAD_REACH: dict[str, Callable[[int, int], tuple[int, ...]]] = {
  # The paper's code: detach at the step start and before the last cycle,
  # so only the last cycle of a step can receive gradient.
  'paper': lambda per_step, per_cycle: (0, per_step - per_cycle),
  # A step is back-propagated whole; steps stay cut from each other.
  'last_step': lambda per_step, per_cycle: (0,),
  # No detaching: gradient through every pass (memory: model.remat).
  'all': lambda per_step, per_cycle: (),
  # One cut, grad_last_k passes before the end of a forward that runs every
  # step (Huginn-style truncation); its place depends on the step, so it is
  # a select inside the scan (`last_k_cut`).
  'last_k': lambda per_step, per_cycle: (),
}


def last_k_cut(recipe: 'Recipe', s, j, steps: int, per_step: int):
  """Whether the dynamic last_k cut falls before pass j of step s (None: no such cut)."""
  if recipe.grad_reach != 'last_k':
    return None
  return s * per_step + j == steps * per_step - recipe.grad_last_k


SUP_UPDATES = ('each', 'accumulate')
HALT_TARGETS = ('token', 'sequence')
MIXERS = ('attention', 'mlp')


@dataclasses.dataclass(frozen=True)
class Recipe:
  grad_reach: str = 'paper'
  grad_last_k: int = 0  # passes back-propagated with grad_reach='last_k'
  n_sup: int = 1  # supervision passes per batch (deep supervision)
  sup_update: str = 'each'  # optimizer step per pass, or one on the summed losses
  halt_loss_weight: float = 0.0  # > 0: the Q-head learns to halt, and decoding obeys it
  halt_target: str = 'token'  # what "right" means for the Q-head (see train_step.halt_loss)
  ema_decay: float = 0.0  # > 0: evaluate and keep the best of an EMA of the params
  fixed_init: bool = False  # y0 / z0 fixed std-1 vectors instead of learned ones
  # RMS-normalise each y / z update (TRM's post-norm blocks); without it the
  # pre-norm residual streams grow geometrically over the passes.
  carry_norm: bool = False
  # x = token + position embedding at unit RMS (TRM scales its embeddings by
  # sqrt(C) to that end); the paper's x starts at std 0.02 * sqrt(2).
  input_norm: bool = False
  # x times this constant (0: off), the scale without the normalisation:
  # sqrt(C) as TRM scales its embeddings, or 1 / 0.028 (unit RMS at init).
  input_scale: float = 0.0
  # Init std of the token and position embeddings (the paper's 0.02).
  embed_init_std: float = 0.02
  mixer: str = 'attention'  # token mixing of the shared block
  act_halt_bias: float = 0.0  # initial bias of ACT's halting head (paper: 0, p = 0.5)

  @property
  def trains_halting(self) -> bool:
    return self.halt_loss_weight > 0

  @property
  def updates_per_batch(self) -> int:
    """Optimizer updates a batch makes: one per supervision pass ('each'), or one."""
    return self.n_sup if self.sup_update == 'each' else 1

  @classmethod
  def of_config(cls, config) -> 'Recipe':
    """A run config's recipe (the paper's where it has no `recipe` section)."""
    recipe = config.get('recipe')
    return cls.from_mapping(recipe.to_dict() if recipe is not None else None)

  @classmethod
  def from_mapping(cls, mapping: Mapping[str, Any] | None) -> 'Recipe':
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping or {}) - fields)
    if unknown:
      raise ValueError(f'Unknown recipe keys {unknown}; known keys: {sorted(fields)}.')
    return cls(**dict(mapping or {}))

  def check(self, name: str, forward_passes: int | None = None) -> 'Recipe':
    """Refuses what `name`'s rung cannot do (in a forward of `forward_passes` block passes,
    where known), with the change to make; returns self."""
    rung = get_rung(name)
    errors = [
      *self._choice_errors(),
      *self._reach_errors(name, rung, forward_passes),
      *self._supervision_errors(name, rung),
      *self._input_errors(name, rung),
    ]
    if errors:
      raise ValueError('Recipe not valid for ' + name + ': ' + '; '.join(errors) + '.')
    return self

  def _choice_errors(self) -> list[str]:
    """The fields that take one of a few names."""
    return [
      f'recipe.{field}={getattr(self, field)!r}: choose one of {list(options)}'
      for field, options in (
        ('grad_reach', GRAD_REACH),
        ('sup_update', SUP_UPDATES),
        ('halt_target', HALT_TARGETS),
        ('mixer', MIXERS),
      )
      if getattr(self, field) not in options
    ]

  def _reach_errors(self, name: str, rung: Rung, forward_passes: int | None) -> list[str]:
    """Gradient reach: only the nested rungs detach, and one last_k cut must bound it."""
    errors = []
    if self.grad_reach != 'paper' and not rung.nested:
      errors.append(
        f'recipe.grad_reach={self.grad_reach!r} applies to the nested rungs '
        f'(ut_level2, trm); {name} detaches nothing: keep grad_reach=paper'
      )
    if (self.grad_reach == 'last_k') != (self.grad_last_k > 0):
      errors.append('grad_reach=last_k needs recipe.grad_last_k > 0 (and only it takes one)')
    if forward_passes and self.grad_last_k > forward_passes:
      errors.append(
        f'recipe.grad_last_k={self.grad_last_k} exceeds the {forward_passes} passes of a '
        'forward: use grad_reach=all, or a smaller k'
      )
    if self.grad_reach == 'last_k' and self.trains_halting:
      errors.append(
        'grad_reach=last_k with halt_loss_weight > 0: the halting loss reads every step, so '
        'one cut does not bound the gradient; use paper, last_step or all'
      )
    if self.grad_reach == 'last_k' and rung.halting == 'act':
      errors.append(
        f'grad_reach=last_k: {name} reads every step through ACT, so one cut does '
        'not bound its gradient; use paper, last_step or all'
      )
    return errors

  def _supervision_errors(self, name: str, rung: Rung) -> list[str]:
    """Deep supervision needs carried streams, a trained Q-head a Q-head."""
    errors = []
    if self.n_sup < 1:
      errors.append(f'recipe.n_sup={self.n_sup}: use 1 (off) or more supervision passes')
    if self.n_sup > 1 and rung.stream != 'dual':
      errors.append(
        f'recipe.n_sup={self.n_sup}: deep supervision carries (y, z), which {name} '
        'does not have; use a dual-stream rung (ut_level1, ut_level2, trm) or n_sup=1'
      )
    if self.trains_halting and rung.halting != 'q':
      errors.append(
        f'recipe.halt_loss_weight={self.halt_loss_weight}: {name} has no Q-head; '
        'use trm or halt_loss_weight=0'
      )
    if self.halt_loss_weight < 0 or not 0 <= self.ema_decay < 1:
      errors.append('recipe.halt_loss_weight must be >= 0 and recipe.ema_decay in [0, 1)')
    return errors

  def _input_errors(self, name: str, rung: Rung) -> list[str]:
    """The input and stream switches: valid values, and a rung with what they change."""
    errors = []
    if self.input_scale < 0 or self.embed_init_std <= 0:
      errors.append('recipe.input_scale must be >= 0 (0: off) and recipe.embed_init_std > 0')
    if self.input_scale and self.input_norm:
      errors.append('recipe.input_scale with input_norm: the norm sets the scale; keep one of them')
    for field, what in (
      ('fixed_init', 'y0 / z0'),
      ('carry_norm', 'y / z streams'),
      ('input_norm', 'y / z streams'),
      ('input_scale', 'y / z streams'),
    ):
      if getattr(self, field) and rung.stream != 'dual':
        errors.append(f'recipe.{field}: {name} has no {what}; use a dual-stream rung')
    if self.act_halt_bias and rung.halting != 'act':
      errors.append(
        f'recipe.act_halt_bias: {name} has no ACT head; use ut, ut_level1 or '
        'ut_level2, or act_halt_bias=0'
      )
    return errors


# -- compute accounting ---------------------------------------------------------


def grad_passes(rung: Rung, cfg: ModelConfig, recipe: Recipe, steps: int | None = None) -> int:
  """Block passes of one forward (all steps run) whose parameters receive gradient.

  A pass gets gradient when the loss depends on its output without a cut in
  between: the final state (every rung), every step's state for ACT (its
  output is their weighted sum) and, with a trained Q-head, every step's
  state too (the halting loss reads each step).
  """
  steps = steps or rung.default_steps(cfg)
  if not rung.nested:
    return rung.block_passes(cfg, steps)
  H, L = rung.cycles(cfg)
  per_step, per_cycle = H * (L + 1), L + 1
  reads_every_step = rung.halting == 'act' or recipe.trains_halting
  total = steps * per_step
  static = GRAD_REACH[recipe.grad_reach](per_step, per_cycle)
  cut = lambda p: (
    p % per_step in static or bool(last_k_cut(recipe, p // per_step, p % per_step, steps, per_step))
  )
  # Walk back from each read-out point to the nearest cut before it.
  reached = set()
  readouts = [(s + 1) * per_step for s in range(steps)] if reads_every_step else [total]
  for end in readouts:
    p = end - 1
    while p >= 0 and p not in reached:
      reached.add(p)
      if cut(p):
        break
      p -= 1
  return len(reached)


def steps_cut_apart(rung: Rung, cfg: ModelConfig, recipe: Recipe) -> bool:
  """Whether the gradient reach detaches (y, z) at every step start (nested rungs)."""
  H, L = rung.cycles(cfg)
  return rung.nested and 0 in GRAD_REACH[recipe.grad_reach](H * (L + 1), L + 1)


def backward_passes(rung: Rung, cfg: ModelConfig, recipe: Recipe, steps: int | None = None) -> int:
  """Block passes the backward pass runs: in every step, those after the step's last
  static cut. The scan over steps transposes every step, so a step whose output is cut
  off from the loss still runs them, on zero cotangents (`grad_passes` <= this), except
  for TRM's untrained Q-head with steps cut apart: only its last step is differentiated
  (`trunks.q_trunk`)."""
  steps = steps or rung.default_steps(cfg)
  if not rung.nested:
    return rung.block_passes(cfg, steps)
  H, L = rung.cycles(cfg)
  per_step = H * (L + 1)
  reads_last_step_only = rung.halting == 'q' and not recipe.trains_halting
  differentiated = 1 if reads_last_step_only and steps_cut_apart(rung, cfg, recipe) else steps
  return differentiated * (
    per_step - max(GRAD_REACH[recipe.grad_reach](per_step, L + 1), default=0)
  )


def compute_record(
  rung: Rung, cfg: ModelConfig, recipe: Recipe, inference_steps: int | None = None
) -> dict[str, int]:
  """The run's compute (docs/compute.md), for the setup record and result tables.

  forward_passes: block passes of one forward (all steps); grad_passes: those
  whose parameters receive gradient; backward_passes: those the backward pass
  runs; train_passes_per_token: block passes run forward or backward per
  position of a batch, over its n_sup supervision passes (each position of a
  batch is seen once, whatever n_sup); inference_passes: block passes per
  generated token (every supervision pass, every step), run with
  `inference_steps` (default: the trained steps).
  """
  forward, backward = rung.block_passes(cfg), backward_passes(rung, cfg, recipe)
  return dict(
    forward_passes=forward,
    grad_passes=grad_passes(rung, cfg, recipe),
    backward_passes=backward,
    n_sup=recipe.n_sup,
    train_passes_per_token=recipe.n_sup * (forward + backward),
    inference_passes=recipe.n_sup * rung.block_passes(cfg, inference_steps),
  )
