"""`python -m maskvq_jax.datasets.build` (documented before the move): runs `maskvq_jax.data.build`."""
from absl import app

from maskvq_jax.data import build

if __name__ == "__main__":
  app.run(build.main)
