"""Float32 matmul throughput of XLA on this device at the models' GEMM shapes,
and the memory bandwidth of an XLA copy.

The ceiling for a training step made of these matmuls: a step of F model FLOPs
cannot run faster than F / (GEMM FLOP/s). Shapes are (rows, in, out) of the
block's projections at the `small` setup (batch 32 x 33 tokens = 1056 rows,
width 128) and the `paper` setup (64 x 33 = 2112 rows, width 384), plus a
large square one. The bandwidth (bytes read + written per second, copying
200 MB) bounds a decoding step that must read a KV cache. Run:

    python benchmarks/gemm_roofline.py [--out results/benchmarks/cpu2_gemm.json]
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


def best_seconds(fn, calls: int, repeats: int = 5) -> float:
  """Seconds per call, the best of `repeats` runs of `calls` calls: a ceiling
  wants the least disturbed run (timings here vary by about 15 %)."""
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(calls))
    best = min(best, (time.perf_counter() - start) / calls)
  return best


def gflops(M: int, K: int, N: int, calls: int = 50) -> float:
  a, b = jnp.ones((M, K)), jnp.ones((K, N))
  matmul = jax.jit(jnp.dot)
  matmul(a, b).block_until_ready()
  return 2 * M * K * N / best_seconds(lambda n: [matmul(a, b) for _ in range(n)][-1], calls) / 1e9


def copy_gbps(n_floats: int = 50_000_000, calls: int = 10) -> float:
  # Reads and writes every element, in place (donated): no fresh pages per call.
  copy = jax.jit(lambda a: a + 1.0, donate_argnums=0)
  x = [copy(jnp.ones((n_floats,)))]

  def run(n):
    for _ in range(n):
      x[0] = copy(x[0])
    return x[0]

  return 2 * 4 * n_floats / best_seconds(run, calls) / 1e9


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', help='JSON path for the numbers')
  args = parser.parse_args()
  result = dict(
    device=jax.devices()[0].device_kind,
    jax=jax.__version__,
    gflops={name: gflops(*shape) for name, shape in SHAPES.items()},
    copy_gbps=copy_gbps(),
  )
  for name, value in result['gflops'].items():
    print(f'{name:32s} {value:7.1f} GFLOP/s')
  print(f'{"copy (read + write)":32s} {result["copy_gbps"]:7.1f} GB/s')
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  main()
