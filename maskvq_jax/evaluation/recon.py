"""One pass of a tokenizer over a split: everything the stage-1 metrics need, per example.

Why one pass: rFID, PSNR, SSIM, LPIPS, codebook usage and the mask analysis all need the same
encode/decode of the same images; running the tokenizer once and returning per-example values
(and codes, masks, pool3 features) keeps the pass to a single compiled program over the sharded
batch, and per-example outputs let `features.BatchRunner` drop padded rows exactly.

Conventions (same as the trainer's eval, `maskvq_jax/evaluation/step_metrics.py`):
  * inputs: uint8 -> x / 127.5 - 1; reconstructions are clipped to [-1, 1];
  * PSNR / SSIM (dm-pix, 11x11 Gaussian window) on [0, 1] images, in float;
  * LPIPS (VGG16, `maskvq_jax/models/lpips.py`) on [-1, 1] images;
  * rFID: the reconstruction is quantised to uint8 first (exactly what a saved PNG would hold),
    then both real and reconstruction go through the FID InceptionV3 (`features.inception_pool3`).
"""
from typing import Any, Callable

import dm_pix
import jax
import jax.numpy as jnp

from maskvq_jax.evaluation import features
from maskvq_jax.evaluation import mask_analysis

NEEDS_TOKENIZER = ("rfid", "psnr", "ssim", "lpips", "usage", "mask")


def quantize_u8(x):
  """[-1, 1] float -> uint8 (round half to even, as np.rint)."""
  return jnp.clip(jnp.rint((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def make_recon_fn(model, metrics: set[str], lpips_module=None) -> Callable[[Any, dict], dict]:
  """BatchRunner fn for `model` (an MQVAE). params = {"tokenizer", ["inception"], ["lpips"]}.

  Returns per-example outputs: psnr, ssim, lpips [B]; codes [B, K]; mask, scores [B, N];
  pool3_real, pool3_rec [B, 2048]; `mask_analysis.object_coverage`'s per-example values (when
  the batch has an object "mask" and the model is masked). Only what `metrics` needs is computed.
  """
  unknown = set(metrics) - set(NEEDS_TOKENIZER)
  if unknown:
    raise ValueError(f"make_recon_fn: not tokenizer metrics: {sorted(unknown)}")
  if "lpips" in metrics and lpips_module is None:
    raise ValueError("lpips requested but no LPIPS module given")

  def fn(params, batch):
    x = batch["image"].astype(jnp.float32) / 127.5 - 1.0
    # a fixed key: the random-mask ablation (scorer="random") draws its scores from it
    rec, aux = model.apply(params["tokenizer"], x, train=False, rngs={"mask": jax.random.key(0)})
    rec = jnp.clip(rec.astype(jnp.float32), -1.0, 1.0)
    out = {}
    x01, r01 = (x + 1.0) / 2.0, (rec + 1.0) / 2.0
    if "psnr" in metrics:
      out["psnr"] = dm_pix.psnr(x01, r01)
    if "ssim" in metrics:
      out["ssim"] = dm_pix.ssim(x01, r01)
    if "lpips" in metrics:
      out["lpips"] = lpips_module(params["lpips"], x, rec)
    if "usage" in metrics:
      out["codes"] = aux["codes"].astype(jnp.int32)
    if "mask" in metrics:
      out["mask"] = aux["mask"].astype(jnp.float32)
      out["scores"] = aux["scores"].astype(jnp.float32)
      if "mask" in batch and not model.dense:
        cells = mask_analysis.pool_to_grid(batch["mask"], model.grid)
        out.update(mask_analysis.object_coverage(aux["mask"], cells))
    if "rfid" in metrics:
      out["pool3_real"] = features.inception_pool3(params["inception"], batch["image"])
      out["pool3_rec"] = features.inception_pool3(params["inception"], quantize_u8(rec))
    return out

  return fn
