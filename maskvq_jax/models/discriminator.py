"""PatchGAN discriminator (pix2pix NLayerDiscriminator) as used by taming and the MQ-VAE authors.

conv4s2(ndf) + LReLU, then (n_layers - 1) x [conv4s2 + BN + LReLU], conv4s1 + BN + LReLU, conv4s1(1).
Init as the authors' `weights_init`: conv kernels N(0, 0.02), BatchNorm scale N(1, 0.02), bias 0.
The two convs with a bias (the first and the last; the others feed a BatchNorm) start at zero here;
`weights_init` leaves them at torch's default U(+-1/sqrt(fan_in)) (+-0.144 and +-0.011 for ndf=64).
Torch BN momentum 0.1 == Flax momentum 0.9. Under jit the BatchNorm statistics are taken over the
global (sharded) batch (the authors': per GPU). With the default ndf=64, n_layers=3 it has
2,765,633 parameters.
NHWC in, [B, h, w, 1] logits out (30x30 patches for 256x256 inputs).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def _bn_scale_init(key, shape, dtype=jnp.float32):
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


class NLayerDiscriminator(nn.Module):
  """x [B, H, W, C] in [-1, 1] -> patch logits [B, H', W', 1] (float32)."""
  ndf: int = 64
  n_layers: int = 3
  dtype: Dtype = jnp.float32

  def _conv(self, feats, stride, use_bias, name):
    return nn.Conv(
        feats, (4, 4), strides=(stride, stride), padding=((1, 1), (1, 1)), use_bias=use_bias,
        dtype=self.dtype, name=name,
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                 (None, None, "conv_in", "conv_out")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)))

  def _bn(self, train, name):
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                        scale_init=_bn_scale_init, name=name)

  @nn.compact
  def __call__(self, x, train: bool = True):
    h = nn.with_logical_constraint(x, ("batch", None, None, None))
    h = nn.leaky_relu(self._conv(self.ndf, 2, True, "conv_0")(h), 0.2)
    mult = 1
    for n in range(1, self.n_layers):
      mult = min(2**n, 8)
      h = self._conv(self.ndf * mult, 2, False, f"conv_{n}")(h)
      h = nn.leaky_relu(self._bn(train, f"bn_{n}")(h), 0.2)
    mult = min(2**self.n_layers, 8)
    h = self._conv(self.ndf * mult, 1, False, f"conv_{self.n_layers}")(h)
    h = nn.leaky_relu(self._bn(train, f"bn_{self.n_layers}")(h), 0.2)
    h = self._conv(1, 1, True, "conv_out")(h)
    return nn.with_logical_constraint(h, ("batch", None, None, None)).astype(jnp.float32)
