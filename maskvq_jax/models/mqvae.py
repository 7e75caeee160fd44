"""MQ-VAE: encoder -> adaptive mask -> EMA quantizer -> adaptive de-mask -> decoder.

Only K = int(keep_ratio * N) of the N = (resolution / f)^2 grid regions are quantized; K is a
Python int, so every shape is static. With `dense=True` the same class is a plain VQGAN (taming
layout with quant/post-quant 1x1 convs, the full taming decoder, and the same EMA quantizer over all
N tokens), the baseline for ablations and for the dense raster GPT.

Collections: "params"; "batch_stats" (the conv scorer's BatchNorm); "vq_stats" (the EMA codebook).
Training-mode calls need the rngs "vq_restart" (dead-code restarts) and, for the random scorer,
"mask"; "dropout" when dropout > 0.
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskvq_jax.models import demasker as demasker_lib
from maskvq_jax.models import layers
from maskvq_jax.models import masker as masker_lib
from maskvq_jax.models import quantizer as quantizer_lib
from maskvq_jax.models import vqgan

Dtype = Any


def num_kept(keep_ratio: float, resolution: int, ch_mult: Sequence[int]) -> int:
  grid = resolution // 2 ** (len(ch_mult) - 1)
  return int(keep_ratio * grid * grid)


def validate_mqvae_kwargs(*, resolution: int, ch: int, ch_mult: Sequence[int], z_channels: int,
                          keep_ratio: float, scorer: str, codebook_size: int, codebook_dim: int,
                          dense: bool = False, in_channels: int = 3, attn_resolutions=(), **unused):
  """Raises ValueError naming the first bad value. Cheap; called before anything is traced."""
  del unused
  if not ch_mult:
    raise ValueError("ch_mult must be non-empty")
  f = 2 ** (len(ch_mult) - 1)
  if resolution <= 0 or resolution % f:
    raise ValueError(f"resolution={resolution} is not divisible by the downsampling factor {f} "
                     f"(ch_mult={tuple(ch_mult)})")
  for name, c in [("ch", ch), ("z_channels", z_channels)] + [
      (f"ch*ch_mult[{i}]", ch * m) for i, m in enumerate(ch_mult)]:
    if c <= 0 or c % 32:
      raise ValueError(f"{name}={c} is not divisible by the 32 GroupNorm groups")
  if not dense and z_channels != ch * ch_mult[-1]:
    raise ValueError(f"z_channels={z_channels} must equal ch*ch_mult[-1]={ch * ch_mult[-1]}: the "
                     "de-mask module feeds the decoder's first block directly")
  if not (isinstance(keep_ratio, (int, float)) and 0.0 < keep_ratio <= 1.0):
    raise ValueError(f"keep_ratio={keep_ratio!r} must be in (0, 1]")
  k = num_kept(keep_ratio, resolution, ch_mult)
  if k < 1:
    raise ValueError(f"keep_ratio={keep_ratio} keeps k={k} < 1 of the {(resolution // f) ** 2} regions")
  if scorer not in masker_lib.SCORERS:
    raise ValueError(f"unknown scorer={scorer!r}; expected one of {masker_lib.SCORERS}")
  if codebook_size < 1 or codebook_dim < 1:
    raise ValueError(f"codebook_size={codebook_size} and codebook_dim={codebook_dim} must be >= 1")
  if in_channels < 1:
    raise ValueError(f"in_channels={in_channels} must be >= 1")


class MQVAE(nn.Module):
  """The MQ-VAE tokenizer (or, with dense=True, a plain EMA-VQGAN). Images are NHWC in [-1, 1]."""
  resolution: int = 256
  in_channels: int = 3
  out_channels: int = 3
  ch: int = 128
  ch_mult: Sequence[int] = (1, 1, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (32,)
  z_channels: int = 256
  dropout: float = 0.0
  scorer: str = "conv"
  keep_ratio: float = 0.30
  codebook_size: int = 1024
  codebook_dim: int = 256
  beta: float = 0.25
  ema_decay: float = 0.99
  restart_unused_codes: bool = True
  demasker_layers: int = 8
  mask_init_value: float = 0.02
  dense: bool = False
  dtype: Dtype = jnp.float32

  def __post_init__(self):
    validate_mqvae_kwargs(**{f: getattr(self, f) for f in (
        "resolution", "ch", "ch_mult", "z_channels", "keep_ratio", "scorer", "codebook_size",
        "codebook_dim", "dense", "in_channels", "attn_resolutions")})
    super().__post_init__()

  @property
  def grid(self) -> int:
    return self.resolution // 2 ** (len(self.ch_mult) - 1)

  @property
  def num_tokens(self) -> int:
    """Tokens per image: K for the masked model, N for the dense one."""
    return self.grid ** 2 if self.dense else num_kept(self.keep_ratio, self.resolution, self.ch_mult)

  def setup(self):
    common = dict(ch=self.ch, ch_mult=tuple(self.ch_mult), num_res_blocks=self.num_res_blocks,
                  attn_resolutions=tuple(self.attn_resolutions), resolution=self.resolution,
                  dropout=self.dropout, dtype=self.dtype)
    self.encoder = vqgan.Encoder(z_channels=self.z_channels, **common)
    self.quantize = quantizer_lib.EMAVectorQuantizer(
        self.codebook_size, self.codebook_dim, beta=self.beta, decay=self.ema_decay,
        restart_unused_codes=self.restart_unused_codes)
    if self.dense:
      self.quant_conv = layers.Dense(self.codebook_dim, **masker_lib.ISLAND)  # quantizer input
      self.post_quant_conv = layers.Dense(self.z_channels, dtype=self.dtype)
      self.decoder = vqgan.TamingDecoder(out_ch=self.out_channels, **common)
    else:
      self.masker = masker_lib.Masker(self.num_tokens, self.codebook_dim, self.scorer, self.dtype)
      self.demasker = demasker_lib.Demasker(self.grid, self.ch * self.ch_mult[-1], self.demasker_layers,
                                            self.mask_init_value, self.dropout, self.dtype)
      self.decoder = vqgan.Decoder(out_ch=self.out_channels, **common)

  def _tokens(self, x, train: bool):
    """Encoder + mask: (quantizer input [B, K, D], positions [B, K], aux dict)."""
    h = self.encoder(x, train)
    self.sow("intermediates", "h", h)
    b, g, _, c = h.shape
    if self.dense:
      positions = jnp.broadcast_to(jnp.arange(g * g, dtype=jnp.int32), (b, g * g))
      aux = dict(mask=jnp.ones((b, g * g), jnp.float32), scores=jnp.ones((b, g * g), jnp.float32))
      return self.quant_conv(h.reshape(b, g * g, c)), positions, aux
    m = self.masker(h, train)
    for k in ("positions", "remain", "mask", "kept_scores"):
      self.sow("intermediates", k, m[k])
    aux = dict(mask=m["mask"], scores=m["scores"])
    return m["kept"], m["positions"], aux

  def encode(self, x, train: bool = False):
    """Images [B, H, W, C] -> (codes [B, K], positions [B, K] score-descending, aux)."""
    quant_in, positions, aux = self._tokens(x, train)
    self.sow("intermediates", "quant_in", quant_in)
    quant, qloss, codes = self.quantize(quant_in, train)
    self.sow("intermediates", "quant", quant)
    perplexity, usage = quantizer_lib.code_statistics(codes, self.codebook_size)
    aux.update(quant=quant, qloss=qloss, quant_in=quant_in, perplexity=perplexity, usage=usage)
    return codes, positions, aux

  def decode(self, quant, positions, train: bool = False):
    """Quantized tokens [B, K, D] at raster `positions` [B, K] -> images [B, H, W, out]."""
    b = quant.shape[0]
    g = self.grid
    if self.dense:
      order = jnp.argsort(positions, axis=-1)  # put tokens back in raster order
      quant = jnp.take_along_axis(quant, order[..., None], axis=1)
      return self.decoder(self.post_quant_conv(quant).reshape(b, g, g, -1), train)
    mask = jnp.zeros((b, g * g), jnp.float32).at[jnp.arange(b)[:, None], positions].set(1.0)
    h = self.demasker(quant, positions, mask, train)
    self.sow("intermediates", "demasker_out", h)
    return self.decoder(h, train)

  def decode_codes(self, codes, positions):
    """Stage-2 output -> images: codes [B, K] and distinct positions [B, K] (any order)."""
    return self.decode(self.quantize.lookup(codes), positions, train=False)

  def __call__(self, x, train: bool = False):
    """Images -> (reconstruction, aux with qloss, codes, positions, mask, scores, ...)."""
    codes, positions, aux = self.encode(x, train)
    rec = self.decode(aux["quant"], positions, train)
    aux.update(codes=codes, positions=positions)
    return rec, aux


STORED_COLLECTIONS = ("params", "batch_stats", "vq_stats")  # not "perturbations" / "intermediates"


def abstract_variables(model: nn.Module, batch: int = 1):
  """Unboxed ShapeDtypeStructs of the model's stored variables (no compute, no memory)."""
  x = jnp.zeros((batch, model.resolution, model.resolution, model.in_channels), jnp.float32)
  rngs = {"params": jax.random.key(0), "mask": jax.random.key(0)}
  abstract = nn.meta.unbox(jax.eval_shape(lambda: model.init(rngs, x, train=False)))
  return {k: v for k, v in abstract.items() if k in STORED_COLLECTIONS}
