"""Does the adaptive mask keep the regions that matter? Heat maps, overlays, object coverage.

Why: the paper's premise is that the scorer keeps important regions and drops redundant ones. On
the procedural shapes dataset we know where the object is, so we can measure it: pool the pixel
object mask to the token grid (fraction of each cell covered by the object), then compare

  kept_on_object = mean object fraction of the KEPT tokens     (what the mask chose)
  chance         = mean object fraction of ALL tokens          (a uniformly random K-subset's
                                                               expected value)
  lift           = kept_on_object / chance                     (1 = no better than chance)

These are area-weighted ("the fraction of kept area that is object" vs "the fraction of the image
that is object"). The token-counting variants `kept_on_object_tokens` / `chance_tokens` /
`lift_tokens` count a token as "on the object" when at least half of its cell is object. Device
functions return per-example values (so padded rows can be dropped); `summarize` averages them on
the host.

The figures (PIL PNGs) show, per example: the input, the score heat map (per-image min-max,
viridis), and the kept-region overlay (dropped regions dimmed, kept-cell borders drawn).
"""
from typing import Optional

import jax.numpy as jnp
import numpy as np

from maskvq_jax.core import files


def pool_to_grid(object_mask, grid: int):
  """Pixel mask [B, H, W] or [B, H, W, 1] (0/1) -> object fraction per cell [B, grid*grid]."""
  m = jnp.asarray(object_mask, jnp.float32)
  if m.ndim == 4:
    m = m[..., 0]
  b, h, w = m.shape
  if h % grid or w % grid:
    raise ValueError(f"object mask {h}x{w} is not divisible by the token grid {grid}")
  m = m.reshape(b, grid, h // grid, grid, w // grid)
  return jnp.mean(m, axis=(2, 4)).reshape(b, grid * grid)


def object_coverage(token_mask, cell_object, threshold: float = 0.5) -> dict:
  """Per-example [B] values from the kept mask [B, N] and the cells' object fractions [B, N].

  Returns {"kept_on_object", "chance"} (area-weighted) and {"kept_on_object_tokens",
  "chance_tokens"} (a token is on the object when its cell fraction >= `threshold`).
  """
  keep = jnp.asarray(token_mask, jnp.float32)
  cell = jnp.asarray(cell_object, jnp.float32)
  on = (cell >= threshold).astype(jnp.float32)
  k = jnp.maximum(jnp.sum(keep, axis=1), 1.0)
  return {"kept_on_object": jnp.sum(keep * cell, axis=1) / k, "chance": jnp.mean(cell, axis=1),
          "kept_on_object_tokens": jnp.sum(keep * on, axis=1) / k,
          "chance_tokens": jnp.mean(on, axis=1)}


def summarize(per_example: dict) -> dict:
  """Host-side means over examples of `object_coverage`'s outputs, plus the lifts (kept / chance).

  Every example has the same K and N, so the mean over examples is also the token-pooled value.
  """
  out = {k: float(np.mean(np.asarray(v, np.float64))) for k, v in per_example.items()}
  for suffix in ("", "_tokens"):
    if f"kept_on_object{suffix}" in out:
      ch = out[f"chance{suffix}"]
      out[f"lift{suffix}"] = out[f"kept_on_object{suffix}"] / ch if ch > 0 else float("nan")
  return out


# ----- figures -----------------------------------------------------------------------------------
def _upsample_grid(v: np.ndarray, h: int, w: int) -> np.ndarray:
  """[B, N] on a g x g raster grid -> [B, h, w] (nearest)."""
  b, n = v.shape
  g = int(round(n ** 0.5))
  if g * g != n or h % g or w % g:
    raise ValueError(f"{n} tokens are not a square grid dividing {h}x{w}")
  v = v.reshape(b, g, g)
  return np.repeat(np.repeat(v, h // g, axis=1), w // g, axis=2)


def heatmaps(scores, height: int, width: int) -> np.ndarray:
  """Scores [B, N] -> uint8 RGB [B, height, width, 3] (per-image min-max, viridis)."""
  from matplotlib import colormaps  # pylint: disable=import-outside-toplevel  # no pyplot
  s = np.asarray(scores, np.float64)
  lo, hi = s.min(axis=1, keepdims=True), s.max(axis=1, keepdims=True)
  s = (s - lo) / np.maximum(hi - lo, 1e-12)
  rgb = colormaps["viridis"](_upsample_grid(s, height, width))[..., :3]
  return np.rint(rgb * 255).astype(np.uint8)


def overlays(images, token_mask, dim: float = 0.3) -> np.ndarray:
  """Kept regions at full brightness, dropped regions dimmed to `dim`, kept cells outlined."""
  img = np.asarray(images)
  b, h, w, _ = img.shape
  m = _upsample_grid(np.asarray(token_mask, np.float32), h, w)  # [B, h, w]
  out = img.astype(np.float32) * (dim + (1.0 - dim) * m[..., None])
  # outline: kept pixels whose right/lower neighbour is dropped (or the image edge)
  edge = np.zeros_like(m, bool)
  edge[:, :, :-1] |= (m[:, :, :-1] > 0) & (m[:, :, 1:] == 0)
  edge[:, :-1, :] |= (m[:, :-1, :] > 0) & (m[:, 1:, :] == 0)
  edge[:, :, 1:] |= (m[:, :, 1:] > 0) & (m[:, :, :-1] == 0)
  edge[:, 1:, :] |= (m[:, 1:, :] > 0) & (m[:, :-1, :] == 0)
  out[edge] = (255.0, 220.0, 0.0)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _upscale(a: np.ndarray, min_side: int) -> np.ndarray:
  f = max(1, -(-min_side // min(a.shape[1:3])))
  return np.repeat(np.repeat(a, f, axis=1), f, axis=2) if f > 1 else a


def save_figures(images, scores, token_mask, out_dir: str, *, max_examples: int = 8,
                 min_side: int = 128, prefix: str = "mask") -> dict[str, str]:
  """Writes `<prefix>_grid.png` (rows: image | heat map | overlay) and per-example
  `<prefix>_heat_XX.png` / `<prefix>_overlay_XX.png`. Returns {name: path}.

  Args:
    images: uint8 [B, H, W, 3]. scores / token_mask: [B, N] on the g x g token grid.
    out_dir: local or gs:// directory (created if missing). max_examples: first examples to draw. min_side: small images
      are upscaled (nearest) so each panel is at least this many pixels high.
  """
  img = np.asarray(images)[:max_examples]
  if img.dtype != np.uint8 or img.ndim != 4:
    raise ValueError(f"images must be uint8 [B, H, W, 3], got {img.dtype} {img.shape}")
  k = img.shape[0]
  s, m = np.asarray(scores)[:k], np.asarray(token_mask)[:k]
  h, w = img.shape[1:3]
  panels = [_upscale(p, min_side) for p in (img, heatmaps(s, h, w), overlays(img, m))]
  paths = {}
  rows = np.concatenate(panels, axis=2)  # [k, H', 3 W', 3]
  grid = np.concatenate(list(rows), axis=0)
  paths["grid"] = files.save_png(files.join(out_dir, f"{prefix}_grid.png"), grid)
  for i in range(k):
    for name, panel in (("heat", panels[1]), ("overlay", panels[2])):
      paths[f"{name}_{i:02d}"] = files.save_png(
          files.join(out_dir, f"{prefix}_{name}_{i:02d}.png"), panel[i])
  return paths


def kept_fraction(token_mask) -> Optional[float]:
  """Mean fraction of tokens kept per image (a sanity number for the report)."""
  m = np.asarray(token_mask, np.float64)
  return float(m.mean()) if m.size else None
