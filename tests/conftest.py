import os

# Sharding tests need several devices; fake them on the host CPU. Must be set
# before JAX initialises its backends, i.e. before any test module imports jax.
# Tests compile many small programs and run them briefly: skip LLVM's
# expensive optimisations and codegen on one thread (float semantics are
# unchanged; the goldens still match). XLA:CPU's older loop emitters
# (--xla_cpu_use_fusion_emitters=false) compile faster still, but the tests would
# then not run the code generator that users' runs do.
os.environ.setdefault(
  'XLA_FLAGS',
  '--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0 '
  '--xla_cpu_parallel_codegen_split_count=1',
)
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

# Tests train the same tiny programs several times (straight vs resumed runs):
# a per-session persistent compilation cache compiles each once.
import tempfile  # noqa: E402

os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='artrm_jax_cache_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')
