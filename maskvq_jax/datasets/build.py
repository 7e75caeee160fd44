"""`python -m maskvq_jax.datasets.build` (documented before the move): runs `maskvq_jax.data.build`."""
from maskvq_jax.core import cli
from maskvq_jax.data import build

if __name__ == "__main__":
  cli.run_absl(build.main)
