"""EMA vector quantizer with dead-code restarts (the authors' `VectorQuantize2`, RQ-VAE style).

The codebook is not a trainable parameter: it lives, with its EMA statistics, in the `vq_stats`
collection and is rebuilt from them after every training-mode forward:

  counts, sums  = one-hot statistics of the step's (global) batch
  cse'          = d * cse + (1 - d) * counts          ee' = d * ee + (1 - d) * sums
  dead codes    : cse' < 1  ->  ee' = a random input vector of the global batch, cse' = 1
  codebook      = ee' / (n (cse' + eps) / (n + n_codes * eps)),   n = sum(cse')

Lookup uses the codebook from *before* the update (as the official code does). Statistics are
computed on the global batch: under `jax.jit` with a batch-sharded input XLA inserts the
cross-device reductions, so no hand-written psum is needed, and the restart vectors are drawn from
a permutation of the global batch with a key that is the same on every device.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def nearest_codes(x, codebook):
  """Squared-Euclidean nearest code, ||x||^2 + ||e||^2 - 2 x.e in float32. x [..., D] -> [...]."""
  x = x.astype(jnp.float32)
  codebook = codebook.astype(jnp.float32)
  d = (jnp.sum(x * x, -1, keepdims=True) + jnp.sum(codebook * codebook, -1)
       - 2.0 * jnp.einsum("...d,nd->...n", x, codebook, precision=jax.lax.Precision.HIGHEST))
  return jnp.argmin(d, axis=-1).astype(jnp.int32)


def ema_update(cse, ee, flat, codes, key, *, decay, eps=1e-5, restart_unused_codes=True):
  """One EMA step. flat [M, D], codes [M]. Returns (cse', ee', codebook')."""
  n_codes, dim = ee.shape
  onehot = jax.nn.one_hot(codes, n_codes, dtype=jnp.float32)  # [M, n]
  counts = jnp.sum(onehot, axis=0)
  sums = jnp.einsum("mn,md->nd", onehot, flat, precision=jax.lax.Precision.HIGHEST)
  cse = decay * cse + (1.0 - decay) * counts
  ee = decay * ee + (1.0 - decay) * sums
  if restart_unused_codes:
    m = flat.shape[0]
    vectors = flat
    if m < n_codes:  # tile with a little uniform noise, as the official `_tile_with_noise`
      reps = -(-n_codes // m)
      noise_key, key = jax.random.split(key)
      vectors = jnp.tile(flat, (reps, 1))
      vectors = vectors + jax.random.uniform(noise_key, vectors.shape) * (0.01 / dim ** 0.5)
    vectors = jax.random.permutation(key, vectors, axis=0)[:n_codes]
    used = cse >= 1.0
    ee = jnp.where(used[:, None], ee, vectors)
    cse = jnp.where(used, cse, 1.0)
  n = jnp.sum(cse)
  normalized = n * (cse + eps) / (n + n_codes * eps)
  return cse, ee, ee / normalized[:, None]


def code_statistics(codes, n_codes):
  """Perplexity and fraction of the codebook used by `codes` (any shape)."""
  counts = jnp.sum(jax.nn.one_hot(codes.reshape(-1), n_codes, dtype=jnp.float32), axis=0)
  p = counts / jnp.maximum(jnp.sum(counts), 1.0)
  perplexity = jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.maximum(p, 1e-12)), 0.0)))
  return perplexity, jnp.mean((counts > 0).astype(jnp.float32))


class EMAVectorQuantizer(nn.Module):
  """x [B, K, D] -> (x_q straight-through, loss, codes [B, K])."""
  codebook_size: int
  codebook_dim: int
  beta: float = 0.25
  decay: float = 0.99
  eps: float = 1e-5
  restart_unused_codes: bool = True

  def setup(self):
    n, d = self.codebook_size, self.codebook_dim
    part = lambda init, names: nn.with_logical_partitioning(init, names)
    # Official init: codebook U(-1/n, 1/n); embed_ema cloned from the N(0, 1) default; counts 0.
    self.codebook = self.variable(
        "vq_stats", "codebook",
        part(lambda: jax.random.uniform(self.make_rng("params"), (n, d), jnp.float32, -1.0 / n, 1.0 / n),
             ("codebook", "embed")))
    self.embed_ema = self.variable(
        "vq_stats", "embed_ema",
        part(lambda: jax.random.normal(self.make_rng("params"), (n, d), jnp.float32), ("codebook", "embed")))
    self.cluster_size_ema = self.variable(
        "vq_stats", "cluster_size_ema", part(lambda: jnp.zeros((n,), jnp.float32), ("codebook",)))

  def lookup(self, codes):
    return jnp.take(self.codebook.value, codes, axis=0)

  def __call__(self, x, train: bool = False):
    x = x.astype(jnp.float32)
    codes = nearest_codes(x, self.codebook.value)
    x_q = self.lookup(codes)  # old codebook, as the official code
    if train and not self.is_initializing():
      flat = jax.lax.stop_gradient(x.reshape(-1, x.shape[-1]))
      cse, ee, cb = ema_update(self.cluster_size_ema.value, self.embed_ema.value, flat, codes.reshape(-1),
                               self.make_rng("vq_restart"), decay=self.decay, eps=self.eps,
                               restart_unused_codes=self.restart_unused_codes)
      self.cluster_size_ema.value, self.embed_ema.value, self.codebook.value = cse, ee, cb
    # Official "legacy" loss: beta * ||sg(x_q) - x||^2 + ||x_q - sg(x)||^2. The codebook is not
    # trainable, so the second term only adds to the value (1.25 * mse in total), not to gradients.
    sg = jax.lax.stop_gradient
    loss = self.beta * jnp.mean(jnp.square(sg(x_q) - x)) + jnp.mean(jnp.square(x_q - sg(x)))
    x_st = x + sg(x_q - x)
    return x_st, loss, codes
