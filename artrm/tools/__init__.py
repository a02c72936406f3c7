"""Tooling around runs: suites, launchers, the main job, the results store and reports.

Nothing here is imported by the library (models, data, configs, training,
evaluation); results and reports import no jax.
"""
