"""Improved precision and recall (Kynkaanniemi et al., NeurIPS 2019) with k-NN manifolds.

Why: FID mixes fidelity and diversity into one number; a mask-ratio ablation needs to see which
one moves. Each feature set defines a manifold: the union of balls around its points whose radius
is the distance to the point's k-th nearest neighbour within the same set (k = 3, the paper's
default; the point itself is not counted). Precision = fraction of generated samples inside the
real manifold; recall = fraction of real samples inside the generated manifold.

Features here are the FID Inception pool3 features (the paper used VGG16 fc2; most image
generation papers report P/R on Inception features, e.g. the ADM evaluation suite).

Distances are computed on device, block by block with static shapes (rows padded to a multiple of
`block`, padded reference points get an infinite distance / a negative radius so they never count),
with matmuls at HIGHEST precision: the default TPU bf16 passes would perturb the k-NN radii.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

_HI = jax.lax.Precision.HIGHEST


def _sq_dists(a, b, b_sq):
  """Squared distances [Na, Nb] between rows of a and b (b_sq = ||b||^2), clamped at 0."""
  a_sq = jnp.sum(a * a, axis=1, keepdims=True)
  d = a_sq + b_sq[None, :] - 2.0 * jnp.matmul(a, b.T, precision=_HI)
  return jnp.maximum(d, 0.0)


@functools.partial(jax.jit, static_argnames=("k",))
def _kth_block(rows, ref, ref_sq, ref_valid, *, k: int):
  """Squared distance from each row to its k-th nearest valid ref point, counting itself as 0th."""
  d = jnp.where(ref_valid[None, :], _sq_dists(rows, ref, ref_sq), jnp.inf)
  smallest = -jax.lax.top_k(-d, k + 1)[0]  # [B, k + 1], ascending
  return smallest[:, k]


@jax.jit
def _inside_block(rows, ref, ref_sq, ref_radii_sq):
  """Whether each row lies in at least one ball (ref_i, radius_i); padded refs have radius -1."""
  d = _sq_dists(rows, ref, ref_sq)
  return jnp.any(d <= ref_radii_sq[None, :], axis=1)


def _pad_rows(x: np.ndarray, multiple: int) -> np.ndarray:
  n = x.shape[0]
  target = -(-n // multiple) * multiple
  return np.concatenate([x, np.zeros((target - n, x.shape[1]), x.dtype)]) if target > n else x


def _blocks(x: np.ndarray, block: int):
  xp = _pad_rows(x, block)
  for s in range(0, xp.shape[0], block):
    yield xp[s:s + block]


def _prepare(features, name: str) -> np.ndarray:
  f = np.asarray(features, np.float32)
  if f.ndim != 2 or f.shape[0] < 1:
    raise ValueError(f"{name} features must be [N, D] with N >= 1, got shape {f.shape}")
  if not np.all(np.isfinite(f)):
    raise ValueError(f"{name} features contain NaN/Inf")
  return f


def knn_radii_sq(features, k: int = 3, block: int = 1024) -> np.ndarray:
  """Squared k-NN radius of every row of `features` [N, D] within the set (self excluded)."""
  f = _prepare(features, "manifold")
  n = f.shape[0]
  if not isinstance(k, int) or k < 1 or k >= n:
    raise ValueError(f"k={k!r} must be an int in [1, N-1] with N={n} points")
  block = min(block, n)
  ref = _pad_rows(f, block)
  valid = np.arange(ref.shape[0]) < n
  ref_sq = np.sum(ref.astype(np.float32) ** 2, axis=1)
  out = [np.asarray(_kth_block(rows, ref, ref_sq, valid, k=k)) for rows in _blocks(f, block)]
  return np.concatenate(out)[:n]


def coverage(query, ref, ref_radii_sq, block: int = 1024) -> float:
  """Fraction of `query` rows inside the manifold of `ref` with squared radii `ref_radii_sq`."""
  q, r = _prepare(query, "query"), _prepare(ref, "reference")
  if q.shape[1] != r.shape[1]:
    raise ValueError(f"feature sizes differ: query {q.shape[1]} vs reference {r.shape[1]}")
  radii = np.asarray(ref_radii_sq, np.float32)
  if radii.shape != (r.shape[0],):
    raise ValueError(f"ref_radii_sq has shape {radii.shape}, expected ({r.shape[0]},)")
  block_r = min(block, r.shape[0])
  ref_p = _pad_rows(r, block_r)
  radii_p = np.full((ref_p.shape[0],), -1.0, np.float32)
  radii_p[:r.shape[0]] = radii
  ref_sq = np.sum(ref_p ** 2, axis=1)
  block_q = min(block, q.shape[0])
  inside = [np.asarray(_inside_block(rows, ref_p, ref_sq, radii_p)) for rows in _blocks(q, block_q)]
  return float(np.mean(np.concatenate(inside)[:q.shape[0]]))


def precision_recall(real, fake, k: int = 3, block: int = 1024) -> dict[str, float]:
  """{"precision", "recall"} of `fake` [N_f, D] against `real` [N_r, D] with k-NN manifolds."""
  real, fake = _prepare(real, "real"), _prepare(fake, "fake")
  return {
      "precision": coverage(fake, real, knn_radii_sq(real, k, block), block),
      "recall": coverage(real, fake, knn_radii_sq(fake, k, block), block),
  }
