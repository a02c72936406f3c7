"""Model hyperparameters, shared by every rung; each rung reads what it needs."""

import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  name: str = 'gpt'
  vocab_size: int = 14
  block_size: int = 180
  n_embd: int = 384
  n_head: int = 6
  n_layer: int = 4
  dropout: float = 0.0
  n_outer_loops: int = 2          # H: cycles per ACT step (ut_level2, trm)
  n_inner_loops: int = 2          # L: z-updates per cycle (ut_level2, trm)
  max_act_steps: int = 0          # 0 = n_layer (the paper's default)
  use_step_embeddings: bool = True
  ponder_cost_weight: float = 0.01
  halt_exploration_prob: float = 0.25
  remat: str = 'none'             # activations kept for backward: block.REMAT_POLICIES

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
