"""artrm: Tiny Autoregressive Recursive Models in JAX/Flax."""
