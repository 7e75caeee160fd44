"""VQGAN encoder and decoders (taming-transformers layout), NHWC.

`Encoder` is taming's encoder unchanged. `Decoder` is the MQ-VAE decoder: taming's decoder without
`conv_in` and the mid block, because the de-mask module plays that role. `TamingDecoder` is the full
taming decoder, used by the dense (plain VQGAN) baseline.

Submodule names follow the torch module paths with dots turned into underscores
(`down.2.block.0` -> `down_2_block_0`) so that `maskvq_jax/parity/convert_mqvae.py` maps checkpoints by rule.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from maskvq_jax.models import layers

Dtype = Any


def constrain_batch(x):
  """Keeps activations sharded over the batch axis only (channels stay whole on each device)."""
  return nn.with_logical_constraint(x, ("batch",) + (None,) * (x.ndim - 1))


class Encoder(nn.Module):
  """x [B, H, W, in] -> h [B, H/f, W/f, z_channels] with f = 2**(len(ch_mult) - 1)."""
  ch: int = 128
  ch_mult: Sequence[int] = (1, 1, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (32,)
  resolution: int = 256
  z_channels: int = 256
  dropout: float = 0.0
  double_z: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = constrain_batch(x)
    h = layers.Conv(self.ch, 3, dtype=self.dtype, name="conv_in")(x)
    res = self.resolution
    for i, mult in enumerate(self.ch_mult):
      for j in range(self.num_res_blocks):
        h = layers.ResnetBlock(self.ch * mult, self.dropout, self.dtype, name=f"down_{i}_block_{j}")(h, train)
        if res in self.attn_resolutions:
          h = layers.AttnBlock(self.dtype, name=f"down_{i}_attn_{j}")(h)
      if i != len(self.ch_mult) - 1:
        h = layers.Downsample(self.dtype, name=f"down_{i}_downsample")(h)
        res //= 2
      h = constrain_batch(h)
    h = layers.ResnetBlock(None, self.dropout, self.dtype, name="mid_block_1")(h, train)
    h = layers.AttnBlock(self.dtype, name="mid_attn_1")(h)
    h = layers.ResnetBlock(None, self.dropout, self.dtype, name="mid_block_2")(h, train)
    h = layers.swish(layers.group_norm("norm_out", self.dtype)(h))
    out = 2 * self.z_channels if self.double_z else self.z_channels
    return constrain_batch(layers.Conv(out, 3, dtype=self.dtype, name="conv_out")(h))


class Decoder(nn.Module):
  """MQ-VAE decoder: h [B, h, w, ch*ch_mult[-1]] -> image [B, H, W, out_ch] (no conv_in, no mid)."""
  ch: int = 128
  out_ch: int = 3
  ch_mult: Sequence[int] = (1, 1, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (32,)
  resolution: int = 256
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  def up_path(self, h, train: bool):
    res = self.resolution // 2 ** (len(self.ch_mult) - 1)
    for i in reversed(range(len(self.ch_mult))):
      for j in range(self.num_res_blocks + 1):
        h = layers.ResnetBlock(self.ch * self.ch_mult[i], self.dropout, self.dtype, name=f"up_{i}_block_{j}")(h, train)
        if res in self.attn_resolutions:
          h = layers.AttnBlock(self.dtype, name=f"up_{i}_attn_{j}")(h)
      if i != 0:
        h = layers.Upsample(self.dtype, name=f"up_{i}_upsample")(h)
        res *= 2
      h = constrain_batch(h)
    h = layers.swish(layers.group_norm("norm_out", self.dtype)(h))
    return layers.Conv(self.out_ch, 3, dtype=self.dtype, name="conv_out")(h)

  @nn.compact
  def __call__(self, h, train: bool = False):
    return self.up_path(constrain_batch(h), train)


class TamingDecoder(Decoder):
  """The full taming decoder (conv_in + mid block + up path): the dense VQGAN baseline's decoder."""

  @nn.compact
  def __call__(self, z, train: bool = False):
    block_in = self.ch * self.ch_mult[-1]
    h = layers.Conv(block_in, 3, dtype=self.dtype, name="conv_in")(constrain_batch(z))
    h = layers.ResnetBlock(block_in, self.dropout, self.dtype, name="mid_block_1")(h, train)
    h = layers.AttnBlock(self.dtype, name="mid_attn_1")(h)
    h = layers.ResnetBlock(block_in, self.dropout, self.dtype, name="mid_block_2")(h, train)
    return self.up_path(h, train)
