"""Adaptive mask: score every grid region, keep the top-k, project the kept features.

Three interchangeable scorers (`scorer=`):
  * "conv"   the released config (`masker_vanilla_refine.py`): LayerNorm over C*H*W (no affine)
             -> 3x3 conv -> ReLU -> 1x1 conv -> BatchNorm(1) -> sigmoid.
  * "mlp"    the older `masker_vanilla.py` ("2layer-fc"): per-token Linear -> ReLU -> Linear -> sigmoid.
  * "random" ablation baseline: a random ranking per image; kept features are not rescaled
             (multiplier 1), so the scorer has no parameters and no gradient path.

Float32 islands (whatever `dtype` the rest of the model computes in): the scorer runs in float32
at "highest" matmul precision (a near-tie at the top-k cut must not flip with the compute dtype),
and so does `pre_projection`, whose output is the quantizer's input (float32 distances and EMA
sums). Both are small next to the encoder.

Top-k runs on stop-gradient scores with a static k, so shapes never depend on data. The kept tokens are
LayerNormed per token (no affine), gathered, multiplied by their (gradient-carrying) score -- the
scorer's only gradient path -- and projected by a bias-free Linear.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskvq_jax.models import layers

Dtype = Any
SCORERS = ("conv", "mlp", "random")
ISLAND = dict(dtype=jnp.float32, precision=jax.lax.Precision.HIGHEST)  # see the module docstring


def _normalize(x, axes, eps=1e-5):
  """torch LayerNorm without affine: biased variance, two-pass, eps inside the sqrt."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=axes, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


class TorchBatchNorm(nn.Module):
  """BatchNorm matching torch.nn.BatchNorm2d: biased variance to normalise, unbiased to track.

  Statistics are taken over the global batch (under jit the batch may be sharded; XLA reduces
  across devices). The official code used per-GPU BatchNorm -- a deliberate, documented deviation.
  """
  momentum: float = 0.1  # torch convention: new = (1 - momentum) * old + momentum * batch.
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, train: bool):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    mean_v = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
    var_v = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
    axes = tuple(range(x.ndim - 1))
    x = x.astype(jnp.float32)
    if train:
      mean = jnp.mean(x, axes)
      var = jnp.mean(jnp.square(x - mean), axes)
      if not self.is_initializing():
        n = x.size // c
        mean_v.value = (1 - self.momentum) * mean_v.value + self.momentum * mean
        var_v.value = (1 - self.momentum) * var_v.value + self.momentum * var * n / max(n - 1, 1)
    else:
      mean, var = mean_v.value, var_v.value
    return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


class Masker(nn.Module):
  """h [B, h, w, C] -> kept tokens and their positions.

  Returns a dict with
    kept      [B, K, codebook_dim]  projected LN(h_tok)[topk] * score[topk], score-descending order
    positions [B, K] int32          raster indices of the kept regions, score-descending
    remain    [B, N-K] int32        the masked regions, score-descending
    mask      [B, N] float32        1 at kept regions
    scores    [B, N] float32        importance scores in raster order (gradient-carrying)
  """
  num_keep: int
  codebook_dim: int
  scorer: str = "conv"
  dtype: Dtype = jnp.float32

  def score(self, h, train: bool):
    b, hh, ww, c = h.shape
    if self.scorer == "conv":
      s = _normalize(h, axes=(1, 2, 3))
      s = nn.relu(layers.Conv(c, 3, **ISLAND, name="score_conv1")(s))
      s = layers.Conv(1, 1, **ISLAND, name="score_conv2")(s)
      s = TorchBatchNorm(name="score_bn")(s, train)
      return jax.nn.sigmoid(s).reshape(b, hh * ww)
    if self.scorer == "mlp":
      s = nn.relu(layers.Dense(c, **ISLAND, name="score_fc1")(h.astype(jnp.float32)))
      s = layers.Dense(1, **ISLAND, name="score_fc2")(s)
      return jax.nn.sigmoid(s.astype(jnp.float32)).reshape(b, hh * ww)
    if self.scorer == "random":
      return jax.random.uniform(self.make_rng("mask"), (b, hh * ww), jnp.float32)
    raise ValueError(f"unknown scorer {self.scorer!r}; expected one of {SCORERS}")

  @nn.compact
  def __call__(self, h, train: bool = False):
    b, hh, ww, c = h.shape
    n = hh * ww
    scores = self.score(h, train)  # [B, N]
    scores = self.perturb("scores", scores)  # identity unless a "perturbations" collection is given
    self.sow("intermediates", "scores", scores)
    _, order = jax.lax.top_k(jax.lax.stop_gradient(scores), n)  # full descending order
    positions, remain = order[:, :self.num_keep], order[:, self.num_keep:]
    tokens = _normalize(h.reshape(b, n, c), axes=(-1,))
    kept = jnp.take_along_axis(tokens, positions[..., None], axis=1)  # [B, K, C]
    kept_scores = jnp.take_along_axis(scores, positions, axis=1)
    if self.scorer != "random":
      kept = kept * kept_scores[..., None]
    kept = layers.Dense(self.codebook_dim, use_bias=False, **ISLAND, name="pre_projection")(kept)
    mask = jnp.zeros((b, n), jnp.float32).at[jnp.arange(b)[:, None], positions].set(1.0)
    return dict(kept=kept, positions=positions.astype(jnp.int32), remain=remain.astype(jnp.int32),
                mask=mask, scores=scores, kept_scores=kept_scores)
