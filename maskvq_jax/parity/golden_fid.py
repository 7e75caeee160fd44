"""Golden check of our FID InceptionV3 against the reference network's pool3 features.

Why: FID values are only comparable to published ones if our Flax port computes the same
features as the reference TorchScript network; `fid_inception_small.npz` (see
shared/golden/README.md) holds its pool3 output for three 299x299 uint8 images.
"""
import jax
import numpy as np

from maskvq_jax.parity.golden_rows import Row, compare
from maskvq_jax.models import inception

RTOL = 1e-4


def pool3_features(images_u8: np.ndarray, variables: dict) -> np.ndarray:
  """Our pool3 for NHWC uint8 images already at 299x299 (input u8 / 128 - 1, as the golden)."""
  x = inception.to_inception_input(images_u8)
  return np.asarray(jax.jit(inception.FIDInceptionV3().apply)(variables, x))


def check_fid_inception(z: dict[str, np.ndarray], params: dict) -> list[Row]:
  """Compares our pool3 on `in/images_u8` with `out/pool3`; passes if max_rel <= 1e-4.

  Args:
    z: the golden file's arrays (`in/images_u8` [B, 299, 299, 3] uint8, `out/pool3` [B, 2048]).
    params: Flax variables {'params': ...} of FIDInceptionV3 (`fetch_weights.inception_params`).
  """
  ours = pool3_features(np.asarray(z["in/images_u8"]), params)
  ref = np.asarray(z["out/pool3"])
  return [compare("out/pool3", ours, ref, rtol=RTOL,
                  note=f"{ref.shape[0]} images, u8/128-1 at 299x299")]
