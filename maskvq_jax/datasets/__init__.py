"""Old home of the dataset builders, kept so `python -m maskvq_jax.datasets.build` still works.

The builders live in `maskvq_jax.data.builders`; the CLI is `maskvq_jax.data.build`.
"""
