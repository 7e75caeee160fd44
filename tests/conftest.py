"""Test set-up: 8 simulated CPU devices, set before anything imports jax."""
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

GOLDEN_DIR = pathlib.Path(
    os.environ.get("MASKVQ_GOLDEN_DIR", pathlib.Path(__file__).resolve().parents[2] / "shared" / "golden"))


@pytest.fixture(scope="session")
def golden_dir():
  if not GOLDEN_DIR.is_dir():
    pytest.fail(f"golden vectors not found at {GOLDEN_DIR} (set MASKVQ_GOLDEN_DIR)")
  return GOLDEN_DIR


@pytest.fixture(scope="session")
def official_small(golden_dir):
  import numpy as np
  return dict(np.load(golden_dir / "official_small.npz"))
