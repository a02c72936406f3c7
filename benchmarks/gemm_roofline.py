"""Float32 matmul throughput of XLA on this device at the models' GEMM shapes.

The ceiling for a training step made of these matmuls: a step of F model FLOPs
cannot run faster than F / (GEMM FLOP/s). Shapes are (rows, in, out) of the
block's projections at the `small` setup (batch 32 x 33 tokens = 1056 rows,
width 128) and the `paper` setup (64 x 33 = 2112 rows, width 384), plus a
large square one. Run:

    python benchmarks/gemm_roofline.py [--out benchmarks/results/cpu2_gemm.json]
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp

SHAPES = {
    'small q/k/v (1056x128x128)': (1056, 128, 128),
    'small fc1 (1056x128x512)': (1056, 128, 512),
    'small fc2 (1056x512x128)': (1056, 512, 128),
    'paper q/k/v (2112x384x384)': (2112, 384, 384),
    'paper fc1 (2112x384x1536)': (2112, 384, 1536),
    'paper fc2 (2112x1536x384)': (2112, 1536, 384),
    'large (4096x1024x1024)': (4096, 1024, 1024),
}


def gflops(M: int, K: int, N: int, calls: int = 50) -> float:
  a, b = jnp.ones((M, K)), jnp.ones((K, N))
  matmul = jax.jit(jnp.dot)
  matmul(a, b).block_until_ready()
  start = time.perf_counter()
  for _ in range(calls):
    out = matmul(a, b)
  out.block_until_ready()
  return 2 * M * K * N * calls / (time.perf_counter() - start) / 1e9


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', help='JSON path for the numbers')
  args = parser.parse_args()
  result = dict(device=jax.devices()[0].device_kind, jax=jax.__version__,
                gflops={name: gflops(*shape) for name, shape in SHAPES.items()})
  for name, value in result['gflops'].items():
    print(f'{name:32s} {value:7.1f} GFLOP/s')
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  main()
