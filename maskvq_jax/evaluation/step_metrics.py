"""Metric maths that runs inside jitted steps (reconstruction quality, mask statistics).

Everything returns sums over the global batch so the host only adds numbers across batches and
divides once (no per-example Python loops, no host round-trips inside steps). Deliberately no
`from __future__ import annotations` here: CLU metric Collections break with it, and they may be
added to this file.
"""
import dm_pix
import jax
import jax.numpy as jnp


def score_stats(scores, mask):
  """Mean/std of the region scores [B, N] and the mean score of kept vs dropped regions."""
  scores, mask = scores.astype(jnp.float32), mask.astype(jnp.float32)
  kept = jnp.sum(scores * mask) / jnp.maximum(jnp.sum(mask), 1.0)
  dropped = jnp.sum(scores * (1 - mask)) / jnp.maximum(jnp.sum(1 - mask), 1.0)
  return {"score/mean": jnp.mean(scores), "score/std": jnp.std(scores), "score/kept_mean": kept,
          "score/dropped_mean": dropped}


def token_mask_to_pixels(mask, height, width):
  """Region mask [B, N] (N = g*g, raster order) -> pixel mask [B, H, W]."""
  b, n = mask.shape
  g = int(round(n**0.5))
  m = mask.reshape(b, g, g)
  return jnp.repeat(jnp.repeat(m, height // g, axis=1), width // g, axis=2)


def _masked_sum(per_row, valid):
  """Sum of per-row values [B] over the rows where `valid` (None: all) is True."""
  per_row = per_row.astype(jnp.float32)
  if valid is None:
    return jnp.sum(per_row)
  return jnp.sum(jnp.where(valid, per_row, 0.0))  # where, not *: a padding NaN stays out


def reconstruction_sums(x, rec, *, lpips_dist=None, valid=None):
  """Per-batch sums of L1, PSNR, SSIM (dm-pix) and LPIPS for images in [-1, 1], NHWC.

  `valid` (bool [B], optional): only those rows are summed and counted (padding rows of a batch
  that does not divide the batch shards).
  """
  x, rec = x.astype(jnp.float32), jnp.clip(rec.astype(jnp.float32), -1.0, 1.0)
  x01, r01 = (x + 1) / 2, (rec + 1) / 2
  out = {
      "l1": _masked_sum(jnp.mean(jnp.abs(x - rec), axis=(1, 2, 3)), valid),
      "psnr": _masked_sum(dm_pix.psnr(x01, r01), valid),
      "ssim": _masked_sum(dm_pix.ssim(x01, r01), valid),
      "count": (jnp.asarray(x.shape[0], jnp.float32) if valid is None
                else jnp.sum(valid.astype(jnp.float32))),
  }
  if lpips_dist is not None:
    out["lpips"] = _masked_sum(jnp.reshape(lpips_dist, (x.shape[0], -1)).sum(-1), valid)
  return out


def object_coverage_sums(token_mask, object_mask, valid=None):
  """How much of the object the kept regions cover, against the fraction of the image kept.

  Args:
    token_mask: [B, N] 0/1 kept regions.
    object_mask: [B, H, W, 1] uint8 0/1 object pixels.
    valid: optional bool [B]; only those rows are summed.

  Returns:
    Sums of per-image object recall (kept object pixels / object pixels) and kept pixel fraction;
    recall well above the kept fraction means the mask keeps the object rather than background.
  """
  obj = object_mask[..., 0].astype(jnp.float32)
  kept = token_mask_to_pixels(token_mask.astype(jnp.float32), obj.shape[1], obj.shape[2])
  recall = jnp.sum(kept * obj, axis=(1, 2)) / jnp.maximum(jnp.sum(obj, axis=(1, 2)), 1.0)
  return {"object_recall": _masked_sum(recall, valid),
          "kept_fraction": _masked_sum(jnp.mean(kept, axis=(1, 2)), valid)}


def code_histogram(codes, codebook_size, valid=None):
  """Counts [codebook_size] of the codes [B, K] in this batch (of the `valid` rows only)."""
  w = (jnp.ones(codes.shape, jnp.float32) if valid is None
       else jnp.broadcast_to(valid.reshape(-1, *([1] * (codes.ndim - 1))), codes.shape)
       .astype(jnp.float32))
  return jnp.zeros((codebook_size,), jnp.float32).at[codes.reshape(-1)].add(w.reshape(-1))


def finalize(sums: dict, hist=None) -> dict:
  """Host side: sums over batches -> means; codebook usage over the whole evaluation."""
  n = max(float(sums.pop("count")), 1.0)
  out = {k: float(v) / n for k, v in sums.items()}
  if hist is not None:
    out["codebook_usage"] = float((hist > 0).mean())
    p = hist / max(hist.sum(), 1.0)
    out["code_perplexity"] = float(jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(p), 0.0))))
  return out


def all_finite(tree):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))
