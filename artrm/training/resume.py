"""Resuming a run: its latest good checkpoint's state, restored into the current optimizer."""

import json

import jax

from artrm.configs import length_gen
from artrm.training import checkpointing
from artrm.training.train_state import TrainState, abstract_state, seeds_shape


def latest(
  ckpts: checkpointing.RunCheckpoints, model, optimizer, seeds: list[int], cfg: dict, replicated
) -> tuple[TrainState, dict[str, tuple]]:
  """The latest good checkpoint's state, and the optimizer fields changed since it was saved
  (`checkpointing.RESUME_CHANGES`; the optimizer state carries over to the new optimizer).

  Only shapes are built for it: a resumed run never computes a fresh init. A field the saved
  config lacks held its default (`length_gen.base_config`)."""
  defaults = json.loads(length_gen.base_config().to_json())  # as the saved config reads
  _, restored, saved = ckpts.restore(
    'latest',
    lambda saved: abstract_state(model, saved, replicated),
    cfg,
    checkpointing.MUTABLE_FIELDS + checkpointing.RESUME_CHANGES,
    move_aside=True,
    defaults=defaults,
  )
  # Gradient clipping adds a stateless stage: the same arrays in another tree.
  fresh = seeds_shape(model, optimizer, seeds)
  opt_state = jax.tree.unflatten(
    jax.tree.structure(fresh.opt_state), jax.tree.leaves(restored.opt_state)
  )
  changes = {
    k: v
    for k, v in checkpointing.changed_fields(saved, cfg, defaults=defaults).items()
    if k in checkpointing.RESUME_CHANGES
  }
  return restored.replace(opt_state=opt_state), changes
