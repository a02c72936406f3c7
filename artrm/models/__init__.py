"""The seven-rung ladder: one block, one module, one registry."""

from artrm.models.compute import block_passes, normalize_budget
from artrm.models.config import ModelConfig
from artrm.models.loss import cross_entropy, lm_loss
from artrm.models.rungs import RUNGS, RecursiveLM, Rung, build_model, get_rung, init_params
from artrm.models.weights import load_neutral
