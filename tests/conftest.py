import os

# Sharding tests need several devices; fake them on the host CPU. Must be set
# before JAX initialises its backends, i.e. before any test module imports jax.
# Tests compile many small programs and run them briefly: skip LLVM's
# expensive optimisations (float semantics are unchanged; goldens still match).
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=2 '
                      '--xla_backend_optimization_level=0')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
