"""Model FLOPs of a training step, counted analytically, and device peaks for MFU.

Counted by hand, not read from XLA, whose cost analysis counts a scan body once
however many steps it runs.
"""

from artrm.models import ModelConfig, get_rung
from artrm.models.recipe import Recipe, backward_passes

# Dense peak FLOP/s per device by matmul input type (`peak_basis`: bf16 for
# model.dtype bfloat16; for float32, tf32 at JAX's default matmul precision on
# Hopper, fp32 at matmul_precision 'float32').
_PEAKS = {
  'H100 PCIe': dict(bf16=756e12, tf32=378e12, fp32=51.2e12),
  'H100': dict(bf16=989e12, tf32=494.7e12, fp32=66.9e12),
  'H200': dict(bf16=989e12, tf32=494.7e12, fp32=66.9e12),
}


def pass_flops(batch: int, seq_len: int, n_embd: int) -> int:
  """Matmul FLOPs of one block pass forward, 2 per multiply-add.

  2*B*T*12*C^2 for q, k, v, out (4 C^2) and the MLP (8 C^2), plus 2*2*B*T^2*C
  for q k^T and weights @ v over the full T x T (the causal mask saves no work).
  """
  B, T, C = batch, seq_len, n_embd
  return 2 * B * T * 12 * C * C + 2 * 2 * B * T * T * C


def head_flops(batch: int, seq_len: int, n_embd: int, vocab_size: int) -> int:
  """The LM head's forward FLOPs, once per forward whatever the rung."""
  return 2 * batch * seq_len * n_embd * vocab_size


def backprop_passes(config: ModelConfig, fwd_passes: float) -> float:
  """Passes the backward pass runs (the paper's recipe, `recipe.backward_passes`) in a
  forward that executed `fwd_passes`: an early stop skips forward and backward alike.

  Nested rungs back-propagate only the last of H cycles per step, and trm only
  that of its last step; the others, all passes.
  """
  rung = get_rung(config.name)
  return backward_passes(rung, config, Recipe()) * fwd_passes / rung.block_passes(config)


def step_flops(config: ModelConfig, batch: int, seq_len: int, fwd_passes: float) -> float:
  """Model FLOPs of one training step: forward of every executed pass, backward (2x) of
  back-propagated ones, and the head's forward + backward.

    pass_flops * (fwd + 2 * bwd) + 3 * head_flops

  Without early stop and no-grad cycles this is the usual 6 * N * D, with N the
  12 C^2 matmul weights of a pass and D the tokens. Layer norms, embeddings, the
  halting heads and the optimizer are left out (all O(B*T*C) or O(params)).
  """
  per_pass = pass_flops(batch, seq_len, config.n_embd)
  bwd = backprop_passes(config, fwd_passes)
  return per_pass * (fwd_passes + 2 * bwd) + 3 * head_flops(
    batch, seq_len, config.n_embd, config.vocab_size
  )


def peak_basis(config) -> str:
  """The input type the model's matmuls run at on a GPU: the row of `_PEAKS` for its MFU."""
  if config.dtype == 'bfloat16':
    return 'bf16'
  return 'fp32' if config.matmul_precision == 'float32' else 'tf32'


def peak_flops(device_kind: str, dtype: str = 'tf32') -> float | None:
  """Dense peak FLOP/s of a known accelerator, else None (no MFU)."""
  for kind, peaks in _PEAKS.items():  # 'H100 PCIe' before 'H100'
    if kind.lower() in device_kind.lower():
      return peaks[dtype]
  return None
