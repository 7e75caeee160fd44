"""Adaptive de-mask module: put the kept tokens back on the grid and fill in the rest.

Kept (quantized) tokens are scattered to their positions, every other slot gets one learned mask
token; a 1x1 conv (`post_projection`) and a 3x3 conv (`conv_in`, the decoder's conv_in in the
authors' code) follow. Then `n_layers` x [ResnetBlock -> direction-constrained attention] and a
final ResnetBlock. The attention multiplies the softmax column of every *masked* key by m_l with
m_0 = mask_init_value and m_{l+1} = sqrt(m_l) (kept keys stay at 1), without renormalising: kept
regions inform masked ones freely, while mask-token slots are damped less and less with depth.

The official ResnetBlocks here carry an unused `temb_proj` Linear; it is not instantiated.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskvq_jax.models import layers

Dtype = Any


def scatter_to_grid(kept, positions, mask_token, num_positions: int):
  """kept [B, K, D] at `positions` [B, K], `mask_token` [D] elsewhere -> [B, N, D]."""
  b, _, d = kept.shape
  full = jnp.broadcast_to(mask_token.astype(kept.dtype), (b, num_positions, d))
  return full.at[jnp.arange(b)[:, None], positions].set(kept)


class Demasker(nn.Module):
  """(kept [B, K, Dq], positions [B, K], mask [B, N]) -> features [B, h, w, output_dim]."""
  grid: int
  output_dim: int
  n_layers: int = 8
  mask_init_value: float = 0.02
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, kept, positions, mask, train: bool = False):
    b, _, d = kept.shape
    g = self.grid
    bound = 1.0 / d
    mask_token = self.param(
        "mask_token", lambda k, s: jax.random.uniform(k, s, jnp.float32, -bound, bound), (d,))
    full = scatter_to_grid(kept, positions, mask_token, g * g).reshape(b, g, g, d)
    h = layers.Conv(self.output_dim, 1, dtype=self.dtype, name="post_projection")(full)
    h = layers.Conv(self.output_dim, 3, dtype=self.dtype, name="conv_in")(h)
    self.sow("intermediates", "demasker_conv_in", h)
    m = mask + self.mask_init_value * (1.0 - mask)  # [B, N]
    for i in range(self.n_layers):
      h = layers.ResnetBlock(None, self.dropout, self.dtype, name=f"blocks_{i}_resblock")(h, train)
      h = layers.AttnBlock(self.dtype, name=f"blocks_{i}_attn")(h, key_weight=m)
      m = jnp.sqrt(m)
    return layers.ResnetBlock(None, self.dropout, self.dtype, name="last_resblock")(h, train)
