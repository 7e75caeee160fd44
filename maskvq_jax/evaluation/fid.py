"""Frechet Inception Distance from pool3 features, in float64.

Why float64 and eigendecompositions: FID subtracts traces of 2048x2048 matrices that are each
O(1e2..1e3) to get a number that is often O(1); float32 loses digits there, and the usual
`scipy.linalg.sqrtm(sigma1 @ sigma2)` can return complex noise or fail on rank-deficient
covariances (fewer images than dimensions). Here tr(sqrt(S1 S2)) is computed as the sum of the
square roots of the eigenvalues of the symmetric PSD matrix sqrt(S1) S2 sqrt(S1), which has the
same eigenvalues as S1 S2 and needs only `eigh` (real, stable, no imaginary parts to discard).

Statistics files use the standard `mu` [2048] / `sigma` [2048, 2048] keys of TTUR / pytorch-fid
/ clean-fid `.npz` files, so published reference statistics plug in unchanged.
"""
import os
from typing import Any, Mapping, Optional

import numpy as np

from maskvq_jax.core import files


def statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean [D] and unbiased covariance [D, D] (ddof=1, as np.cov) of features [N, D], float64."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2:
    raise ValueError(f"features must be [N, D], got shape {f.shape}")
  if f.shape[0] < 2:
    raise ValueError(f"FID statistics need at least 2 feature rows, got {f.shape[0]}")
  if not np.all(np.isfinite(f)):
    raise ValueError("features contain NaN/Inf")
  mu = f.mean(axis=0)
  centred = f - mu
  sigma = centred.T @ centred / (f.shape[0] - 1)
  return mu, sigma


def _check_stats(mu, sigma, what: str) -> tuple[np.ndarray, np.ndarray]:
  mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(f"{what}: mu {mu.shape} / sigma {sigma.shape} must be [D] and [D, D]")
  return mu, sigma


def _sqrt_psd(sigma: np.ndarray) -> np.ndarray:
  """Symmetric square root of a PSD matrix (tiny negative eigenvalues from rounding -> 0)."""
  w, v = np.linalg.eigh((sigma + sigma.T) / 2)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1, sigma2) -> float:
  """tr(sqrt(sigma1 @ sigma2)) for covariance matrices, via eigh (see module docstring)."""
  root1 = _sqrt_psd(np.asarray(sigma1, np.float64))
  m = root1 @ np.asarray(sigma2, np.float64) @ root1
  w = np.linalg.eigvalsh((m + m.T) / 2)
  return float(np.sum(np.sqrt(np.clip(w, 0.0, None))))


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2)), in float64 (clamped at 0)."""
  mu1, sigma1 = _check_stats(mu1, sigma1, "first statistics")
  mu2, sigma2 = _check_stats(mu2, sigma2, "second statistics")
  if mu1.shape != mu2.shape:
    raise ValueError(f"feature sizes differ: {mu1.shape[0]} vs {mu2.shape[0]}")
  diff = mu1 - mu2
  d = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
            - 2.0 * trace_sqrt_product(sigma1, sigma2))
  return max(d, 0.0)


def fid_from_features(features1, features2) -> float:
  """FID between two feature sets [N1, D] and [N2, D], in float64.

  When either set has fewer rows than dimensions (small evaluations, tests, rFID on a few
  thousand images), the covariances are low-rank and tr(sqrt(S1 S2)) equals the nuclear norm of
  B A^T, with A, B the centred features scaled by 1/sqrt(N - 1): the nonzero eigenvalues of
  S1 S2 = A^T A B^T B are those of (B A^T)^T (B A^T). That costs O(N1 N2 D) instead of the two
  O(D^3) eigendecompositions of the covariance route, which is used otherwise.
  """
  f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
  for name, f in (("first", f1), ("second", f2)):
    if f.ndim != 2 or f.shape[0] < 2:
      raise ValueError(f"{name} features must be [N >= 2, D], got shape {f.shape}")
    if not np.all(np.isfinite(f)):
      raise ValueError(f"{name} features contain NaN/Inf")
  if f1.shape[1] != f2.shape[1]:
    raise ValueError(f"feature sizes differ: {f1.shape[1]} vs {f2.shape[1]}")
  n1, n2, d = f1.shape[0], f2.shape[0], f1.shape[1]
  if min(n1, n2) >= d:
    return frechet_distance(*statistics(f1), *statistics(f2))
  mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
  a = (f1 - mu1) / np.sqrt(n1 - 1)
  b = (f2 - mu2) / np.sqrt(n2 - 1)
  nuclear = float(np.sum(np.linalg.svd(b @ a.T, compute_uv=False)))
  diff = mu1 - mu2
  return max(float(diff @ diff + np.sum(a * a) + np.sum(b * b) - 2.0 * nuclear), 0.0)


def save_statistics(path: str | os.PathLike, mu, sigma,
                    meta: Optional[Mapping[str, Any]] = None) -> str:
  """Writes `mu`, `sigma` (float64) and optional `meta/<key>` scalars/strings to `path` (.npz,
  local or gs://; atomic for local files). Returns the absolute path."""
  mu, sigma = _check_stats(mu, sigma, str(path))
  extra = {f"meta/{k}": np.asarray(v) for k, v in (meta or {}).items()}
  return files.save_npz(path, mu=mu, sigma=sigma, **extra)


def _load_npz(path) -> dict:
  if not files.isfile(path):
    raise FileNotFoundError(f"FID statistics file not found: {path}")
  with files.open(path, "rb") as f, np.load(f) as z:
    return {k: z[k] for k in z.files}


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) in float64 from a standard FID statistics .npz (keys `mu` and `sigma`)."""
  z = _load_npz(path)
  missing = [k for k in ("mu", "sigma") if k not in z]
  if missing:
    raise ValueError(f"{path} is not an FID statistics file: missing {missing} "
                     f"(found keys {sorted(z)})")
  return _check_stats(z["mu"], z["sigma"], str(path))


def load_meta(path: str | os.PathLike) -> dict:
  """The `meta/<key>` entries written by `save_statistics` (empty for published files)."""
  return {k[len("meta/"):]: v.item() for k, v in _load_npz(path).items() if k.startswith("meta/")}
